"""Request records for the served model: parsing, limits, image decoding and path rules.

A record is ``{"prompt", "image", "elements"?}``; ``image`` is base64 bytes or a path under the
allowed root. Anything else is refused with a :class:`RecordError` that names the record and the
problem (HTTP 400 when served).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tokenfocus.config import ServeConfig
from tokenfocus.images import ImageError, open_image


class RecordError(ValueError):
    """A request record that cannot be scored; the message names the record and the problem."""


@dataclass
class Limits:
    allowed_root: Path | None
    max_image_bytes: int
    max_pixels: int


def limits_from(cfg: ServeConfig) -> Limits:
    return Limits(
        Path(cfg.allowed_root).resolve() if cfg.allowed_root else None, cfg.max_image_bytes, cfg.max_pixels
    )


def confined_path(value: str, root: Path | None, where: str) -> Path:
    """Resolve a path under the allowed root, refusing ``..`` escapes and outside absolutes."""
    if root is None:
        raise RecordError(f"{where}: image paths are disabled (no allowed root); send base64")
    if "\x00" in value:
        raise RecordError(f"{where}: image path contains a NUL byte")
    candidate = (root / value).resolve() if not PurePosixPath(value).is_absolute() else Path(value).resolve()
    if candidate != root and root not in candidate.parents:
        raise RecordError(f"{where}: image path {value!r} is outside the allowed root")
    return candidate


def decode_image(value: Any, limits: Limits, where: str):
    """A base64 PNG/JPEG or a path under the allowed root, decoded with the size limits."""
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{where}: 'image' must be a base64 string or a path")
    text = value.strip()
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    looks_b64 = (
        len(text) > 64 and "/" not in text[:8] and not text.lower().endswith((".png", ".jpg", ".jpeg"))
    )
    try:
        if looks_b64:
            if len(text) * 3 // 4 > limits.max_image_bytes:
                raise RecordError(f"{where}: image larger than {limits.max_image_bytes} bytes")
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise RecordError(f"{where}: 'image' is neither valid base64 nor a path") from None
            return open_image(
                data, max_pixels=limits.max_pixels, max_bytes=limits.max_image_bytes, name=where
            )
        path = confined_path(text, limits.allowed_root, where)
        return open_image(
            path, max_pixels=limits.max_pixels, max_bytes=limits.max_image_bytes, name=f"{where} ({text})"
        )
    except ImageError as exc:
        raise RecordError(str(exc)) from None


def parse_records(records: list[dict], limits: Limits) -> tuple[list, list[str], list[list[str]]]:
    """Validate request records; raise :class:`RecordError` naming the first bad one."""
    images, prompts, elements = [], [], []
    for i, rec in enumerate(records):
        where = f"record {i}"
        prompt = rec.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RecordError(f"{where}: missing or empty 'prompt'")
        els = rec.get("elements")
        if els is None or (isinstance(els, float) and math.isnan(els)):
            els = []
        if isinstance(els, str):
            try:
                els = json.loads(els) if els.strip() else []
            except json.JSONDecodeError:
                raise RecordError(f"{where}: 'elements' is not a JSON list") from None
        if isinstance(els, np.ndarray):
            els = els.tolist()
        if not isinstance(els, list) or not all(isinstance(e, str) and e.strip() for e in els):
            raise RecordError(f"{where}: 'elements' must be a list of non-empty strings")
        images.append(decode_image(rec.get("image"), limits, where))
        prompts.append(prompt)  # the scorer cuts overlong prompts, with a warning
        elements.append(list(dict.fromkeys(els)))  # duplicates scored once
    return images, prompts, elements
