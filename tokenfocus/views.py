"""Parts of an image with the rest hidden: what the scorer asks counts and relations of
(:mod:`tokenfocus.scoring.grounding`), and what pre-training asks counts of, so that a base has seen
the views it is scored on (docs/styles.md). One module that both depend on, and nothing else."""

from __future__ import annotations

import numpy as np
from PIL import Image

#: A box of the image: (x from, x to), (y from, y to), in fractions of its width and height.
Box = tuple[tuple[float, float], tuple[float, float]]


def canvas(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """An image's RGB pixels and its median colour: what every view of it is cut from."""
    a = np.asarray(image.convert("RGB"))
    return a, np.median(a.reshape(-1, 3), axis=0).astype(np.uint8)


def kept(pixels_and_fill: tuple[np.ndarray, np.ndarray], rows: slice, cols: slice) -> Image.Image:
    """The image (its :func:`canvas`) with ``rows`` x ``cols`` of its pixels kept, the rest its median colour."""
    pixels, fill = pixels_and_fill
    a = np.empty_like(pixels)
    a[...] = fill
    a[rows, cols] = pixels[rows, cols]
    return Image.fromarray(a)


def box_view(
    pixels_and_fill: tuple[np.ndarray, np.ndarray], x: tuple[float, float], y: tuple[float, float]
) -> Image.Image:
    """The image (its :func:`canvas`) with the box ``x`` by ``y`` (fractions of its width and
    height, from the left and top) kept, the rest filled with its median colour."""
    h, w = pixels_and_fill[0].shape[:2]
    rows = slice(round(y[0] * h), round(y[1] * h))
    return kept(pixels_and_fill, rows, slice(round(x[0] * w), round(x[1] * w)))


def count_boxes(cuts: list[float], grid: int) -> list[Box]:
    """The boxes the scorer reads a count from (``score.grounding.count_views: [bands, cells]``):
    the bands between ``cuts``, across and then down, and the ``grid`` x ``grid`` cells."""
    edges = [0.0, *sorted(set(cuts)), 1.0]
    bands = list(zip(edges, edges[1:], strict=False))
    cells = [(i / grid, (i + 1) / grid) for i in range(grid)]
    return (
        [(b, (0.0, 1.0)) for b in bands]
        + [((0.0, 1.0), b) for b in bands]
        + [(x, y) for y in cells for x in cells]
    )
