"""Safe image decoding: size limits, decompression bombs, and every mode converted to RGB."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_BYTES = 20_000_000


class ImageError(ValueError):
    """An image that cannot be used; the message names it and the problem."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (RGBA, P, L, CMYK, I;16, ...) to RGB; alpha goes on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("P", "PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")


def open_image(
    src: str | Path | bytes | Image.Image,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> Image.Image:
    """Decode an image fully, enforcing limits before the pixels are read.

    Args:
        src: a path, encoded bytes, or a PIL image.
        max_pixels: width x height above which the image is refused (decompression bombs).
        max_bytes: encoded size above which the image is refused.
        name: how to name the image in errors (defaults to the path).

    Returns:
        An RGB image, first frame for animations.

    Raises:
        ImageError: missing, too large, truncated or undecodable, naming the image.
    """
    if isinstance(src, Image.Image):
        label = name or "<PIL image>"
        if src.width * src.height > max_pixels:
            raise ImageError(f"{label}: {src.width}x{src.height} exceeds {max_pixels} pixels")
        return to_rgb(src)
    if isinstance(src, bytes | bytearray):
        label, data = name or "<bytes>", bytes(src)
    else:
        label = name or str(src)
        path = Path(src)
        if not path.is_file():
            raise ImageError(
                f"{label}: {'a folder, not an image file' if path.is_dir() else 'file not found'}"
            )
        if path.stat().st_size > max_bytes:
            raise ImageError(f"{label}: {path.stat().st_size} bytes exceeds {max_bytes}")
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise ImageError(f"{label}: {len(data)} bytes exceeds {max_bytes}")
    if not data:
        raise ImageError(f"{label}: empty file")
    # Truncated files must fail, not decode half an image silently.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            # The header is read; refuse a bomb before its pixels are decompressed.
            if img.width * img.height > max_pixels:
                raise ImageError(f"{label}: {img.width}x{img.height} exceeds {max_pixels} pixels")
            img.seek(0)
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label}: decompression bomb refused ({exc})") from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as exc:
        raise ImageError(f"{label}: cannot decode image ({exc.__class__.__name__}: {exc})") from None
    return to_rgb(img)


def load_images(root: str | Path, img_paths: list[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Decode each distinct image once: ``{img_path: RGB image}``."""
    root = Path(root)
    return {p: open_image(root / p, max_pixels=max_pixels, name=p) for p in dict.fromkeys(img_paths)}


class ImageCache:
    """``{img_path: RGB image}`` decoded on first use and kept for at most ``max_items`` images
    (least recently used out first), so a trainer's memory does not grow with its split.

    Args:
        root: the folder ``img_path`` values are relative to.
        max_items: how many decoded images to keep.
        max_side: shrink (never enlarge) an image whose longer side exceeds this, keeping its
            aspect; 0 keeps every image as decoded. Set it to what the processor resizes to.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        max_items: int = 4096,
        max_side: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        from collections import OrderedDict

        self.root, self.max_items, self.max_side, self.max_pixels = (
            Path(root),
            max_items,
            max_side,
            max_pixels,
        )
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()
        self.decoded = 0  # images decoded so far (misses), for tests and logs

    def __getitem__(self, img_path: str) -> Image.Image:
        img = self._cache.get(img_path)
        if img is not None:
            self._cache.move_to_end(img_path)
            return img
        img = open_image(self.root / img_path, max_pixels=self.max_pixels, name=img_path)
        if self.max_side and max(img.size) > self.max_side:
            img.thumbnail((self.max_side, self.max_side), Image.BICUBIC)
        self.decoded += 1
        self._cache[img_path] = img
        if len(self._cache) > self.max_items:
            self._cache.popitem(last=False)
        return img

    def __len__(self) -> int:
        return len(self._cache)
