"""Drawing a scene: the shared vocabulary (shapes, colours, sizes, counts, relations), the scene
itself, and the renderer that SynthMuse's generators and pre-training both draw with, in any
:class:`~tokenfocus.render.styles.Style` (the classic one bit for bit as before styles)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from tokenfocus.render.effects import background, optics, shade, shape_outline
from tokenfocus.render.styles import Look, Style, sample_look

SHAPES = ["circle", "square", "triangle", "star", "diamond", "cross"]


COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 20),
    "purple": (140, 40, 180),
    "orange": (250, 140, 10),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}


SIZES = {"small": 0.07, "large": 0.13}  # radius as a fraction of the image side


COUNTS = {1: "one", 2: "two", 3: "three", 4: "four"}


RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


BACKGROUNDS = [
    (128, 128, 128),
    (200, 200, 190),
    (70, 80, 90),
    (170, 200, 230),
    (215, 190, 160),
    (60, 110, 70),
    (235, 235, 235),
    (40, 40, 60),
]


@dataclass
class Group:
    shape: str
    color: str
    size: str
    count: int


@dataclass
class Scene:
    groups: list[Group]
    relation: str | None = None  # between groups[0] and groups[1]
    extras: list[Group] = field(default_factory=list)  # unmentioned objects
    missing: set[int] = field(default_factory=set)  # indices of groups not drawn
    background: int = 0


def _regions(scene: Scene, k: int) -> list[tuple[float, float, float, float]]:
    """One box (x0, y0, x1, y1, in 0..1) per group; the relation decides the order."""
    vertical = scene.relation in ("above", "below")
    order = list(range(k))
    if scene.relation in ("right of", "below"):
        order[0], order[1] = 1, 0
    boxes = [None] * k
    for slot, gi in enumerate(order):
        lo, hi = slot / k, (slot + 1) / k
        boxes[gi] = (0.0, lo, 1.0, hi) if vertical else (lo, 0.0, hi, 1.0)
    return boxes


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "cross":
        w = r * 0.38
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:  # star
        pts = []
        for j in range(10):
            rad = r if j % 2 == 0 else r * 0.45
            a = -math.pi / 2 + j * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        d.polygon(pts, fill=fill)


def drawn_fill(color: str, background: tuple[int, int, int]) -> tuple[int, int, int]:
    """The RGB a ``color`` group is drawn in on ``background``: inverted where the two are too
    close, so that no shape is drawn invisible on its background."""
    fill = COLORS[color]
    if fill == background or sum(abs(a - b) for a, b in zip(fill, background, strict=True)) < 60:
        return tuple(255 - c for c in fill)
    return fill


def render(
    scene: Scene,
    size: int,
    rng: random.Random,
    style: Style | None = None,
    placed: list[tuple[int, float, float, float]] | None = None,
) -> Image.Image:
    """Draw a scene at 4x and downsample, for smooth edges at small sizes.

    Args:
        scene: what to draw.
        size: the output side in pixels.
        rng: positions (and the style's draws) come from it.
        style: the drawing choices; None or the classic style draws as SynthMuse always has.
        placed: if given, every drawn shape is appended to it as (its group's index in
            ``scene.groups + scene.extras``, centre x, centre y, radius), in fractions of the side:
            what a label about a part of the image is counted from. It draws nothing else.
    """
    if style is None or style.plain:
        return _render_classic(scene, size, rng, placed)
    return _render_styled(scene, size, random.Random(rng.getrandbits(64)), style, placed)


def _render_classic(scene: Scene, size: int, rng: random.Random, placed_out=None) -> Image.Image:
    big = size * 4
    bg = BACKGROUNDS[scene.background]
    img = Image.new("RGB", (big, big), bg)
    d = ImageDraw.Draw(img)
    groups_all = list(scene.groups) + scene.extras
    boxes = _regions(scene, len(groups_all))
    for gi, g in enumerate(groups_all):
        if gi in scene.missing:  # the box stays empty, so the layout does not give it away
            continue
        x0, y0, x1, y1 = boxes[gi]
        r = SIZES[g.size] * big
        fill = drawn_fill(g.color, bg)
        placed: list[tuple[float, float]] = []
        for _ in range(g.count):
            for _try in range(60):
                cx = (
                    rng.uniform(x0 * big + r, x1 * big - r)
                    if (x1 - x0) * big > 2 * r
                    else (x0 + x1) / 2 * big
                )
                cy = (
                    rng.uniform(y0 * big + r, y1 * big - r)
                    if (y1 - y0) * big > 2 * r
                    else (y0 + y1) / 2 * big
                )
                if all((cx - px) ** 2 + (cy - py) ** 2 > (2.1 * r) ** 2 for px, py in placed):
                    break
            placed.append((cx, cy))
            if placed_out is not None:
                placed_out.append((gi, cx / big, cy / big, r / big))
            _draw_shape(d, g.shape, cx, cy, r, fill)
    return img.resize((size, size), Image.LANCZOS)


def _centres(
    count: int, box, r: float, big: int, look: Look, rng: random.Random
) -> list[tuple[float, float]]:
    """Centres for ``count`` shapes of radius ``r`` in ``box``, at least ``look.spacing`` radii
    apart where the box allows, each free to leave the box's margin by ``look.jitter`` radii."""
    x0, y0, x1, y1 = (v * big for v in box)
    m = r * (1 - look.jitter)
    placed: list[tuple[float, float]] = []
    for _ in range(count):
        for _try in range(60):
            cx = rng.uniform(x0 + m, x1 - m) if x1 - x0 > 2 * m else (x0 + x1) / 2
            cy = rng.uniform(y0 + m, y1 - m) if y1 - y0 > 2 * m else (y0 + y1) / 2
            if all((cx - px) ** 2 + (cy - py) ** 2 > (look.spacing * r) ** 2 for px, py in placed):
                break
        placed.append((cx, cy))
    return placed


def _stamp(img: Image.Image, paint, shape: str, cx: float, cy: float, r: float, angle: float) -> None:
    """Paint one shape onto ``img``: ``paint`` is a colour, or a function of the local box's
    (x0, y0, side) giving an image of that side (a shaded fill). Only the shape's box is touched."""
    x0, y0 = int(math.floor(cx - r)) - 1, int(math.floor(cy - r)) - 1
    side = int(math.ceil(2 * r)) + 3
    m = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(m)
    lx, ly = cx - x0, cy - y0
    if shape == "circle":
        d.ellipse([lx - r, ly - r, lx + r, ly + r], fill=255)
    else:
        d.polygon(shape_outline(shape, lx, ly, r, angle), fill=255)
    img.paste(paint(x0, y0, side) if callable(paint) else paint, (x0, y0, x0 + side, y0 + side), mask=m)


def _far(rgb, colors, least: int = 90) -> bool:
    return all(sum(abs(a - b) for a, b in zip(rgb, c, strict=True)) >= least for c in colors)


def safe_background(scene: Scene) -> int:
    """The scene's background, or the next palette entry far from every group's colour: a styled
    image draws each colour as itself, never inverted, so its label stays exact."""
    used = [COLORS[g.color] for g in list(scene.groups) + scene.extras]
    for k in range(len(BACKGROUNDS)):
        i = (scene.background + k) % len(BACKGROUNDS)
        if _far(BACKGROUNDS[i], used):
            return i
    return scene.background


def _render_styled(scene: Scene, size: int, rng: random.Random, style: Style, placed=None) -> Image.Image:
    look = sample_look(style, rng)
    big = size * 4
    bi = safe_background(scene)
    used = [COLORS[g.color] for g in list(scene.groups) + scene.extras]
    others = [c for j, c in enumerate(BACKGROUNDS) if j != bi and _far(c, used, 60)] or [BACKGROUNDS[bi]]
    img = background(look.background, big, BACKGROUNDS[bi], rng.choice(others), rng)
    light = rng.uniform(0, 2 * math.pi)
    groups_all = list(scene.groups) + scene.extras
    boxes = _regions(scene, len(groups_all))
    for gi, g in enumerate(groups_all):
        if gi in scene.missing:  # the box stays empty, so the layout does not give it away
            continue
        r = SIZES[g.size] * big * look.scale
        fill = COLORS[g.color]
        edge = {"dark": (20, 20, 20), "light": (245, 245, 245)}.get(look.outline)
        if edge is not None and not _far(edge, [fill], 60):  # a black shape gets a light edge
            edge = (245, 245, 245) if look.outline == "dark" else (20, 20, 20)
        for cx, cy in _centres(g.count, boxes[gi], r, big, look, rng):
            if placed is not None:
                placed.append((gi, cx / big, cy / big, r / big))
            angle = math.radians(rng.uniform(-look.rotation, look.rotation)) if look.rotation else 0.0
            if edge is not None and look.outline_width > 0:
                _stamp(img, edge, g.shape, cx, cy, r * (1 + look.outline_width), angle)
            paint = fill
            if look.fill == "shaded":

                def paint(x0, y0, side, cx=cx, cy=cy, r=r, fill=fill):
                    return shade(side, fill, cx - x0, cy - y0, r, light)

            _stamp(img, paint, g.shape, cx, cy, r, angle)
    return optics(img.resize((size, size), Image.LANCZOS), look)


def random_scene(rng: random.Random) -> Scene:
    k = rng.choices([1, 2, 3], weights=[0.3, 0.45, 0.25])[0]
    shapes = rng.sample(SHAPES, k)  # distinct shapes keep element keys unique per prompt
    groups = [
        Group(
            s,
            rng.choice(list(COLORS)),
            rng.choice(list(SIZES)),
            rng.choices([1, 2, 3, 4], weights=[0.4, 0.3, 0.2, 0.1])[0],
        )
        for s in shapes
    ]
    if k == 3:  # three groups share the canvas: keep them sparse enough to fit a third of it
        for g in groups:
            g.count = min(g.count, 3)
    return Scene(
        groups=groups,
        relation=rng.choice(list(RELATIONS)) if k >= 2 else None,
        background=rng.randrange(len(BACKGROUNDS)),
    )
