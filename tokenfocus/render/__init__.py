"""The renderer as a room of its own: the shared vocabulary and scenes (:mod:`.draw`) and the
drawing styles read from ``params.yaml`` (:mod:`.styles`)."""

from tokenfocus.render.draw import (
    BACKGROUNDS,
    COLORS,
    COUNTS,
    RELATIONS,
    SHAPES,
    SIZES,
    Group,
    Scene,
    drawn_fill,
    random_scene,
    render,
    safe_background,
)
from tokenfocus.render.styles import Style, StyleBook, StyleError, pick_style

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "COUNTS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "Group",
    "Scene",
    "Style",
    "StyleBook",
    "StyleError",
    "drawn_fill",
    "pick_style",
    "random_scene",
    "render",
    "safe_background",
]
