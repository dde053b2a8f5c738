"""What a style's :class:`~tokenfocus.render.styles.Look` does to pixels: the canvas behind the
shapes, a shaded fill, and the optics applied after drawing (lighting, colour temperature,
vignette, blur, compression); and the random lighting fine-tuning augments with."""

from __future__ import annotations

import functools
import io
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from tokenfocus.render.styles import Look


@functools.lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates of an n x n canvas, in 0..1 (read-only, shared)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _clip8(v: float) -> int:
    """One channel level, clipped to 0..255 and truncated: ``int(np.clip(v, 0, 255))`` without
    numpy's per-call cost on a Python float (a clutter canvas asks it ~70 times)."""
    return int(min(max(v, 0), 255))


def _levels(values: np.ndarray) -> np.ndarray:
    """8-bit levels of a float canvas (any float dtype, last axis the channels): clipped in place
    to 0..255, then truncated."""
    return np.clip(values, 0, 255, out=values).astype(np.uint8)


def _blown_up(values: np.ndarray, k: int) -> Image.Image:
    """The image of a canvas drawn at 1/``k`` of its side, each level repeated k x k: the same
    bytes as clipping the full canvas, k^2 times fewer clips."""
    return Image.fromarray(np.repeat(np.repeat(_levels(values), k, 0), k, 1))


def background(kind: str, big: int, bg, other, rng: random.Random) -> Image.Image:
    """The canvas: ``bg`` flat, or a gradient to ``other``, noise, a texture, clutter, a checker,
    a patchwork or a motif.

    Every kind computes each pixel with the same float operations, in the same dtypes and order, as
    a full ``big`` x ``big`` x 3 canvas of ``bg`` plus the kind's layer would; only the passes over
    the canvas are fewer (a row times a column, or a coarse canvas blown up after its clip), so the
    bytes are the ones the pre-trained bases and SynthMuse were drawn with. Why: the canvas was a
    third of a pre-training step's drawing (docs/pretraining.md, "What pre-training costs")."""
    level = np.asarray(bg, np.float32)  # (3,) the flat canvas's value, as a float32 canvas holds it
    seed = rng.getrandbits(32)  # drawn for every kind, so that the kinds after it draw the same
    yy, xx = _grid(big)
    x, y = xx[0], yy[:, 0]  # the grid's columns and rows: xx and yy are outer products of them
    if kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        # np.cos(a) is a float64 scalar: t, and the canvas after it, are float64
        t = (np.cos(a) * (x - 0.5))[None, :] + (np.sin(a) * (y - 0.5))[:, None]
        t = t / 0.71 * 0.5 + 0.5
        layer = t[..., None] * (np.asarray(other, np.float32) - level)
        layer *= 0.6
        layer += level
        img = Image.fromarray(_levels(layer))
    elif kind == "noise":
        coarse = np.random.default_rng(seed).normal(0.0, rng.uniform(8, 22), (big // 2, big // 2, 1))
        img = _blown_up(coarse.astype(np.float32) + level, 2)
    elif kind == "texture":
        period, a = rng.uniform(6, 18), rng.uniform(0, math.pi)
        phase = (np.cos(a) * x)[None, :] + (np.sin(a) * y)[:, None]
        wave = np.sin(phase * big / period * 2 * math.pi)
        img = Image.fromarray(_levels((rng.uniform(10, 25) * wave)[..., None] + level))
    elif kind == "patchwork":
        # irregular hard-edged patches (a Voronoi partition) in tones near the background: large
        # regions of one tone, as walls, floors and skies are, which no other training kind draws
        # (docs/styles.md: the held-out checker's large cells alone took the count check to chance)
        nrng = np.random.default_rng(seed)
        k = rng.randint(3, 20)
        seeds = nrng.random((k, 2)).astype(np.float32)
        # the partition at the output's resolution (the canvas is drawn at 4x), then blown up
        sy, sx = _grid(big // 4)
        cell = ((sy[..., None] - seeds[:, 0]) ** 2 + (sx[..., None] - seeds[:, 1]) ** 2).argmin(-1)
        tone = nrng.uniform(-1.0, 1.0, (k, 1)) * rng.uniform(18, 40) + nrng.normal(0.0, 6.0, (k, 3))
        img = _blown_up(level + tone.astype(np.float32)[cell], 4)
    elif kind == "checker":
        cell = rng.randint(big // 12, big // 6)
        tone = ((np.arange(big)[:, None] // cell + np.arange(big)[None, :] // cell) % 2).astype(np.float32)
        img = Image.fromarray(_levels(level + ((tone - 0.5) * 2 * rng.uniform(22, 34))[..., None]))
    else:  # flat, and the canvas a motif or clutter is drawn on
        img = Image.new("RGB", (big, big), tuple(_clip8(v) for v in level.tolist()))
    if kind == "motif":
        _motif(img, big, bg, rng)
    if kind == "clutter":  # thin strokes and specks near the background's tone: nothing nameable
        d = ImageDraw.Draw(img)
        for _ in range(rng.randint(12, 30)):
            tone = tuple(_clip8(c + rng.uniform(-55, 55)) for c in bg)
            x0, y0 = rng.uniform(0, big), rng.uniform(0, big)
            if rng.random() < 0.6:
                ang, ln = rng.uniform(0, math.pi), rng.uniform(big * 0.05, big * 0.3)
                d.line(
                    [(x0, y0), (x0 + ln * math.cos(ang), y0 + ln * math.sin(ang))],
                    fill=tone,
                    width=rng.randint(1, 3),
                )
            else:
                s = rng.uniform(1.5, big * 0.012)
                d.rectangle([x0 - s, y0 - s, x0 + s, y0 + s], fill=tone)
    return img


def shape_outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """The polygon of a non-circle shape, turned by ``angle`` radians about its centre: the
    renderer's objects and the motif's figures are the same polygons."""
    if shape == "square":
        k = r * 0.85
        pts = [(-k, -k), (k, -k), (k, k), (-k, k)]
    elif shape == "triangle":
        pts = [(0, -r), (r, r * 0.8), (-r, r * 0.8)]
    elif shape == "diamond":
        pts = [(0, -r), (r, 0), (0, r), (-r, 0)]
    elif shape == "cross":
        w = r * 0.38
        pts = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
    else:  # star
        pts = [
            (
                (r if j % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + j * math.pi / 5),
                (r if j % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + j * math.pi / 5),
            )
            for j in range(10)
        ]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


MOTIF_SHAPES = ("circle", "star", "cross", "triangle")


def _motif(img: Image.Image, big: int, bg, rng: random.Random) -> None:
    """One shape of the vocabulary repeated over the whole canvas on a tilted lattice, in one tone,
    the background's shifted 40-150 levels, as polka dots, star prints and plus patterns are on
    fabrics and wallpapers. Why: a figure repeated to the canvas's edges is backdrop, not an
    object, and no other kind teaches it (docs/styles.md: empty backdrops asked every shape). Never
    a square or diamond (a checker's cells): the held-out family's design stays unseen. In no
    default style list (docs/styles.md: the motif in pre-training's tower stage)."""
    d = ImageDraw.Draw(img)
    sign = rng.choice((-1, 1))
    delta = rng.uniform(40, 150)
    if not 0 <= sum(bg) / 3 + sign * delta <= 255:  # no room that way: the other way, not clipped to near bg
        sign = -sign
    tone = tuple(_clip8(c + sign * delta) for c in bg)
    shape = rng.choice(MOTIF_SHAPES)
    r = big * rng.uniform(0.035, 0.07)  # half the small shapes' radius to theirs
    period, a, turn = r * rng.uniform(2.6, 4.0), rng.uniform(0, math.pi / 2), rng.uniform(0, math.pi)
    u, v = (math.cos(a) * period, math.sin(a) * period), (-math.sin(a) * period, math.cos(a) * period)
    n = int(1.5 * big / period) + 1
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            x, y = big / 2 + i * u[0] + j * v[0], big / 2 + i * u[1] + j * v[1]
            if not (-period <= x <= big + period and -period <= y <= big + period):
                continue
            if shape == "circle":
                d.ellipse([x - r, y - r, x + r, y + r], fill=tone)
            else:
                d.polygon(shape_outline(shape, x, y, r, turn), fill=tone)


def shade(big: int, fill, cx: float, cy: float, r: float, angle: float) -> Image.Image:
    """A full-canvas image of ``fill`` lit from ``angle``: 1.2x on the lit side, 0.8x on the far one."""
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    t = ((xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)) / max(r, 1.0)
    f = 1.0 + 0.2 * np.clip(t, -1.0, 1.0)
    return Image.fromarray(np.clip(np.asarray(fill, np.float32) * f[..., None], 0, 255).astype(np.uint8))


def optics(img: Image.Image, look: Look) -> Image.Image:
    """Lighting, colour temperature, vignette, blur and compression, in that order."""
    if look.brightness != 1.0:
        img = ImageEnhance.Brightness(img).enhance(look.brightness)
    if look.contrast != 1.0:
        img = ImageEnhance.Contrast(img).enhance(look.contrast)
    if look.temperature or look.vignette:
        a = np.asarray(img, np.float32)
        a[..., 0] *= 1 + look.temperature
        a[..., 2] *= 1 - look.temperature
        if look.vignette:
            n = a.shape[0]
            yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / (n - 1) - 0.5
            a *= (1 - look.vignette * np.clip((xx**2 + yy**2) / 0.5, 0, 1))[..., None]
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if look.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(look.blur))
    if look.jpeg:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=look.jpeg)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def relight(img: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """Random lighting for fine-tuning (iMatch's augmentation): brightness and contrast scaled by
    up to ``strength`` either way, colour temperature by a third of it; 0 returns ``img``."""
    if strength <= 0:
        return img
    b, c, t = rng.uniform(-1.0, 1.0, 3) * strength
    neutral = dict.fromkeys(("outline_width", "blur", "vignette"), 0.0)
    look = Look(
        "flat",
        "flat",
        "none",
        scale=1.0,
        rotation=0.0,
        jitter=0.0,
        spacing=2.1,
        jpeg=0,
        **neutral,
        brightness=1 + b,
        contrast=1 + c,
        temperature=t / 3,
    )
    return optics(img, look)
