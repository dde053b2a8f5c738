"""Drawing styles as data: backgrounds, edges, shape scale, placement and optics.

A :class:`Style` is a named set of drawing choices read from ``params.yaml`` (``styles.catalog``).
Each choice is a range or a list the renderer samples from per image, so one style is a family
of looks, not one look. Labels stay exact under every style: the renderer keeps the background
away from every group's colour, lighting shifts stay inside what still reads as that colour, and
a scale range never lets a small shape grow as large as a large one.
"""

from __future__ import annotations

import functools
import io
import math
import random
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from tokenfocus.config import ConfigError

#: Background kinds the renderer knows. ``checker`` and ``shaded`` fills are reserved, by the
#: default params, for the held-out family: no model sees them while learning.
BACKGROUND_KINDS = ("flat", "gradient", "noise", "texture", "clutter", "checker")
FILL_KINDS = ("flat", "shaded")
OUTLINE_KINDS = ("none", "dark", "light")


class StyleError(ConfigError):
    """A style in ``styles.catalog`` names an unknown kind or an impossible range."""


@dataclass(frozen=True)
class Style:
    """One named set of drawing choices; every default is today's plain SynthMuse drawing."""

    name: str = "classic"
    family: str = "classic"  # the held-out family is a family name (``styles.heldout_family``)
    background: tuple[str, ...] = ("flat",)  # kinds, one drawn per image
    fill: tuple[str, ...] = ("flat",)  # flat | shaded (lit from one side)
    outline: tuple[str, ...] = ("none",)  # none | dark | light
    outline_width: tuple[float, float] = (0.0, 0.0)  # fraction of the shape's radius
    scale: tuple[float, float] = (1.0, 1.0)  # x the size's radius; within (0.75, 1.3) sizes stay apart
    rotation: float = 0.0  # degrees either way
    jitter: float = 0.0  # a group's shapes may leave their region's margin by this x radius
    spacing: float = 2.1  # least distance between centres, in radii: below 2 shapes overlap
    blur: tuple[float, float] = (0.0, 0.0)  # Gaussian radius, output pixels
    jpeg: tuple[int, int] = (0, 0)  # quality range; 0 = lossless
    brightness: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    temperature: tuple[float, float] = (0.0, 0.0)  # red up and blue down by this fraction
    vignette: tuple[float, float] = (0.0, 0.0)  # darkening at the corners

    @property
    def plain(self) -> bool:
        """Whether this is the classic drawing, which the renderer keeps bit for bit."""
        return all(
            getattr(self, f.name) == f.default for f in fields(self) if f.name not in ("name", "family")
        )

    @classmethod
    def from_params(cls, name: str, raw: dict) -> Style:
        """Build and check one ``styles.catalog`` entry, naming the style and key on error."""
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = set(raw) - known
        if unknown:
            raise StyleError(
                f"styles.catalog.{name}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        kw = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            v = raw[f.name]
            if isinstance(f.default, tuple):
                v = tuple(v) if isinstance(v, list | tuple) else (v,)
            kw[f.name] = v
        style = cls(name=name, **{"family": name, **kw})
        style.check()
        return style

    def check(self) -> None:
        """Refuse unknown kinds and empty or reversed ranges."""
        where = f"styles.catalog.{self.name}"
        for key, allowed in (
            ("background", BACKGROUND_KINDS),
            ("fill", FILL_KINDS),
            ("outline", OUTLINE_KINDS),
        ):
            got = getattr(self, key)
            bad = [k for k in got if k not in allowed]
            if not got or bad:
                raise StyleError(f"{where}.{key}: {list(got)} must name one or more of {list(allowed)}")
        for key in (
            "outline_width",
            "scale",
            "blur",
            "jpeg",
            "brightness",
            "contrast",
            "temperature",
            "vignette",
        ):
            lo_hi = getattr(self, key)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise StyleError(f"{where}.{key}: {list(lo_hi)} is not a [low, high] range")
        if not (0.75 <= self.scale[0] and self.scale[1] <= 1.3):
            # small (0.07) x 1.3 < large (0.13) x 0.75: the size label stays exact
            raise StyleError(
                f"{where}.scale: {list(self.scale)} leaves 0.75..1.3, where small and large meet"
            )
        if not 0 <= self.jpeg[0] <= self.jpeg[1] <= 100:
            raise StyleError(f"{where}.jpeg: {list(self.jpeg)} is not a quality range in 0..100")
        if self.spacing <= 0 or self.jitter < 0 or self.rotation < 0:
            raise StyleError(f"{where}: spacing must be > 0, jitter and rotation >= 0")


@dataclass(frozen=True)
class Look:
    """One image's draw from a style: the concrete choices the renderer applies."""

    background: str
    fill: str
    outline: str
    outline_width: float
    scale: float
    rotation: float
    jitter: float
    spacing: float
    blur: float
    jpeg: int
    brightness: float
    contrast: float
    temperature: float
    vignette: float


def sample_look(style: Style, rng: random.Random) -> Look:
    """Draw one image's concrete choices from ``style``."""

    def u(lo_hi):
        lo, hi = lo_hi
        return lo if lo == hi else rng.uniform(lo, hi)

    return Look(
        background=rng.choice(style.background),
        fill=rng.choice(style.fill),
        outline=rng.choice(style.outline),
        outline_width=u(style.outline_width),
        scale=u(style.scale),
        rotation=style.rotation,
        jitter=style.jitter,
        spacing=style.spacing,
        blur=u(style.blur),
        jpeg=int(round(u(style.jpeg))),
        brightness=u(style.brightness),
        contrast=u(style.contrast),
        temperature=u(style.temperature),
        vignette=u(style.vignette),
    )


@functools.lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates of an n x n canvas, in 0..1 (read-only, shared)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def background(kind: str, big: int, bg, other, rng: random.Random) -> Image.Image:
    """The canvas: ``bg`` flat, or a gradient to ``other``, noise, a texture, clutter or a checker."""
    base = np.empty((big, big, 3), np.float32)
    base[:] = bg
    nrng = np.random.default_rng(rng.getrandbits(32))
    yy, xx = _grid(big)
    if kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)) / 0.71 * 0.5 + 0.5
        base = base + (np.asarray(other, np.float32) - base) * t[..., None] * 0.6
    elif kind == "noise":
        coarse = nrng.normal(0.0, rng.uniform(8, 22), (big // 2, big // 2, 1)).astype(np.float32)
        base = base + np.repeat(np.repeat(coarse, 2, 0), 2, 1)
    elif kind == "texture":
        period, a = rng.uniform(6, 18), rng.uniform(0, math.pi)
        wave = np.sin((np.cos(a) * xx + np.sin(a) * yy) * big / period * 2 * math.pi)
        base = base + (rng.uniform(10, 25) * wave)[..., None]
    elif kind == "checker":
        cell = rng.randint(big // 12, big // 6)
        tone = ((np.arange(big)[:, None] // cell + np.arange(big)[None, :] // cell) % 2).astype(np.float32)
        base = base + ((tone - 0.5) * 2 * rng.uniform(22, 34))[..., None]
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    if kind == "clutter":  # thin strokes and specks near the background's tone: nothing nameable
        from PIL import ImageDraw

        d = ImageDraw.Draw(img)
        for _ in range(rng.randint(12, 30)):
            tone = tuple(int(np.clip(c + rng.uniform(-55, 55), 0, 255)) for c in bg)
            x, y = rng.uniform(0, big), rng.uniform(0, big)
            if rng.random() < 0.6:
                ang, ln = rng.uniform(0, math.pi), rng.uniform(big * 0.05, big * 0.3)
                d.line(
                    [(x, y), (x + ln * math.cos(ang), y + ln * math.sin(ang))],
                    fill=tone,
                    width=rng.randint(1, 3),
                )
            else:
                s = rng.uniform(1.5, big * 0.012)
                d.rectangle([x - s, y - s, x + s, y + s], fill=tone)
    return img


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


def pick_style(styles: tuple[Style, ...] | None, rng: random.Random) -> Style | None:
    """One image's style, drawn from ``styles``; one style or none takes nothing from ``rng``, so
    a classic-only run draws exactly what it drew before styles existed."""
    if not styles:
        return None
    return styles[0] if len(styles) == 1 else rng.choice(styles)


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


@dataclass(frozen=True)
class StyleBook:
    """The catalog, and which styles draw the benchmark, pre-training and the held-out set."""

    catalog: dict[str, Style]
    heldout_family: str
    synth: tuple[str, ...]
    pretrain: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg) -> StyleBook:
        """Build from a :class:`tokenfocus.config.StylesConfig`, refusing a held-out style in
        the styles any model learns from."""
        catalog = {n: Style.from_params(n, dict(raw or {})) for n, raw in cfg.catalog.items()}
        catalog.setdefault("classic", Style())
        book = cls(catalog, cfg.heldout_family, tuple(cfg.synth), tuple(cfg.pretrain))
        for use in ("synth", "pretrain"):
            names = getattr(book, use)
            if not names:
                raise StyleError(f"styles.{use}: empty; name at least one style of styles.catalog")
            for n in names:
                if n not in catalog:
                    raise StyleError(f"styles.{use}: unknown style {n!r}; the catalog has {sorted(catalog)}")
                if catalog[n].family == cfg.heldout_family:
                    raise StyleError(
                        f"styles.{use}: {n!r} belongs to the held-out family {cfg.heldout_family!r}, "
                        "which no model may learn from"
                    )
        if cfg.heldout_family and not book.heldout:
            raise StyleError(
                f"styles.heldout_family: no style of family {cfg.heldout_family!r} in the catalog"
            )
        return book

    @property
    def heldout(self) -> tuple[Style, ...]:
        """The held-out family's styles (empty when none is set)."""
        return tuple(
            s for s in self.catalog.values() if self.heldout_family and s.family == self.heldout_family
        )

    def styles(self, use: str) -> tuple[Style, ...]:
        """The styles of one use: ``synth``, ``pretrain`` or ``heldout``."""
        return self.heldout if use == "heldout" else tuple(self.catalog[n] for n in getattr(self, use))
