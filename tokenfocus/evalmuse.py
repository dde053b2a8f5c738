"""Raw EvalMuse-40K / NTIRE 2025 Track 1 records in, averaged typed records and submissions out.

The raw format keeps one value per annotator (``total_score`` a list of 1..5, each
``element_score`` value a list of 0/1). Everything downstream works on the average per
(prompt, image), as the dataset's own preprocessing and the challenge's ``eval.json`` do.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Categories seen in EvalMuse-40K (shared/reference/evalmuse_and_ntire.md).
CATEGORIES = (
    "object",
    "animal/human",
    "animal",
    "human",
    "food",
    "attribute",
    "color",
    "material",
    "shape",
    "counting",
    "spatial",
    "location",
    "activity",
    "other",
)
FLAG_FIELDS = ("promt_meaningless", "split_confidence", "attribute_confidence")  # sic
# The category is the last parenthesised group; the text itself may hold parentheses.
_KEY = re.compile(r"^(?P<text>.*\S)\s+\((?P<cat>[^()]+)\)\s*$")


class EvalMuseError(ValueError):
    """A file or record that does not follow the EvalMuse format; the message names it."""


@dataclass(frozen=True)
class Element:
    key: str  # exactly as in the data, e.g. "red circle (color)"
    text: str  # "red circle"
    category: str | None  # "color"; None when the key carries no category


@dataclass
class Record:
    prompt_id: str
    prompt: str
    img_path: str
    type: str = ""
    total_score: float | None = None  # mean over annotators, 1..5; None when unlabelled
    element_score: dict[str, float | None] = field(default_factory=dict)  # key -> mean in 0..1
    elements: list[Element] = field(default_factory=list)
    flags: dict[str, float] = field(default_factory=dict)  # flag -> mean over annotators


def parse_element_key(key: str) -> Element:
    """Split ``"<text> (<category>)"`` into its parts.

    Args:
        key: an element key; the text may itself contain parentheses.

    Returns:
        The element; ``category`` is None when the key has no trailing ``(category)``.
    """
    m = _KEY.match(key)
    if not m:
        return Element(key=key, text=key.strip(), category=None)
    return Element(key=key, text=m.group("text"), category=m.group("cat").strip())


def read_json_list(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON file that must hold a list of objects.

    Raises:
        EvalMuseError: missing file, non-UTF-8 bytes, truncated or invalid JSON, or not a list
            of objects; the message names the file (and the position or index).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise EvalMuseError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise EvalMuseError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalMuseError(f"{path}: invalid JSON at line {exc.lineno} col {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise EvalMuseError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise EvalMuseError(f"{path}: record {i} is {type(item).__name__}, not an object")
    return data


def _mean(values: Any, where: str) -> float | None:
    """Mean of a per-annotator list (or a number already averaged, as in ``eval.json``)."""
    if values is None:
        return None
    if isinstance(values, bool) or not isinstance(values, int | float | list):
        raise EvalMuseError(f"{where}: expected a number or a list of numbers, got {values!r}")
    if isinstance(values, int | float):
        return float(values)
    if not values:
        raise EvalMuseError(f"{where}: empty annotator list")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise EvalMuseError(f"{where}: non-numeric annotator value {v!r}")
    return float(sum(values)) / len(values)


def average_record(raw: dict[str, Any], index: int, *, source: str = "records") -> Record:
    """Average one raw record's annotator lists into a typed :class:`Record`.

    Values are not range-checked here: the validation gate reports every out-of-range or
    NaN value with examples, rather than stopping at the first.

    Raises:
        EvalMuseError: a missing or mistyped field, naming the record index and field.
    """
    where = f"{source}[{index}]"
    for name in ("prompt", "img_path"):
        if not isinstance(raw.get(name), str):
            raise EvalMuseError(f"{where}.{name}: missing or not a string")
    raw_elements = raw.get("element_score") or {}
    if not isinstance(raw_elements, dict):
        raise EvalMuseError(f"{where}.element_score: expected an object of key -> scores")
    element_score = {k: _mean(v, f"{where}.element_score[{k!r}]") for k, v in raw_elements.items()}
    flags = {}
    for name in FLAG_FIELDS:
        if name in raw:
            flags[name] = _mean(raw[name], f"{where}.{name}")
    return Record(
        prompt_id=str(raw.get("prompt_id", "")),
        prompt=raw["prompt"],
        img_path=raw["img_path"],
        type=str(raw.get("type", "")),
        total_score=_mean(raw.get("total_score"), f"{where}.total_score"),
        element_score=element_score,
        elements=[parse_element_key(k) for k in raw_elements],
        flags=flags,
    )


def raw_problems(raws: Iterable[dict[str, Any]], *, source: str = "records") -> list[str]:
    """Raw-format checks that averaging would hide: consistent per-annotator list lengths."""
    problems = []
    for i, raw in enumerate(raws):
        lengths = {}
        if isinstance(raw.get("total_score"), list):
            lengths["total_score"] = len(raw["total_score"])
        for k, v in (raw.get("element_score") or {}).items():
            if isinstance(v, list):
                lengths[f"element_score[{k!r}]"] = len(v)
        for name in FLAG_FIELDS:
            if isinstance(raw.get(name), list):
                lengths[name] = len(raw[name])
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k}={n}" for k, n in lengths.items())
            problems.append(
                f"{source}[{i}] ({raw.get('img_path')}): annotator lists differ in length: {detail}"
            )
    return problems


def load_records(path: str | Path) -> list[Record]:
    """Read a raw EvalMuse file (``train_list.json``, ``test.json`` or ``eval.json``)."""
    raws = read_json_list(path)
    return [average_record(r, i, source=Path(path).name) for i, r in enumerate(raws)]


def check_scores(records: Iterable[Record], *, source: str = "records") -> None:
    """Raise on the first total or element score outside its range (1..5, 0..1) or not finite."""
    for i, r in enumerate(records):
        if r.total_score is not None and not (math.isfinite(r.total_score) and 1 <= r.total_score <= 5):
            raise EvalMuseError(f"{source}[{i}] ({r.img_path}).total_score: {r.total_score} not in 1..5")
        for k, v in r.element_score.items():
            if v is not None and not (math.isfinite(v) and 0 <= v <= 1):
                raise EvalMuseError(f"{source}[{i}] ({r.img_path}).element_score[{k!r}]: {v} not in 0..1")


def finite(obj: Any) -> Any:
    """``obj`` with every NaN float, however deep, as None (JSON has no NaN; a metric of a model
    without any ranking, such as a bootstrap interval, is undefined, not a number)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return None if isinstance(obj, float) and obj != obj else obj


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file.
    A NaN is written as null (:func:`finite`)."""
    path = Path(path)
    obj = finite(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, ensure_ascii=False, indent=1, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def submission_records(
    records: list[Record], totals: list[float], elements: list[dict[str, float]]
) -> list[dict]:
    """NTIRE ``output.json`` records; element keys exactly as given in the input."""
    if not (len(records) == len(totals) == len(elements)):
        raise ValueError("records, totals and element scores must have the same length")
    out = []
    for r, t, e in zip(records, totals, elements, strict=True):
        missing = [el.key for el in r.elements if el.key not in e]
        if missing:
            raise EvalMuseError(f"{r.img_path}: no prediction for element(s) {missing}")
        out.append(
            {
                "prompt": r.prompt,
                "img_path": r.img_path,
                "total_score": float(t),
                "element_score": {el.key: float(e[el.key]) for el in r.elements},
            }
        )
    return out


def write_submission(
    path: str | Path, records: list[Record], totals: list[float], elements: list[dict[str, float]]
) -> Path:
    """Write an NTIRE 2025 Track 1 ``output.json`` atomically."""
    return write_json_atomic(path, submission_records(records, totals, elements))


def read_submission(path: str | Path) -> list[Record]:
    """Read an ``output.json`` (or ``eval.json``) back as records with averaged scores."""
    return load_records(path)
