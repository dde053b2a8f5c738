"""Drawing styles as data: backgrounds, edges, shape scale, placement and optics.

A :class:`Style` is a named set of drawing choices read from ``params.yaml`` (``styles.catalog``).
Each choice is a range or a list the renderer samples from per image, so one style is a family
of looks, not one look. Labels stay exact under every style: the renderer keeps the background
away from every group's colour, lighting shifts stay inside what still reads as that colour, and
a scale range never lets a small shape grow as large as a large one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

from tokenfocus.config import ConfigError

#: Background kinds the renderer knows. ``checker`` and ``shaded`` fills are reserved, by the
#: default params, for the held-out family: no model sees them while learning.
BACKGROUND_KINDS = ("flat", "gradient", "noise", "texture", "clutter", "checker", "patchwork", "motif")
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


def pick_style(styles: tuple[Style, ...] | None, rng: random.Random) -> Style | None:
    """One image's style, drawn from ``styles``; one style or none takes nothing from ``rng``, so
    a classic-only run draws exactly what it drew before styles existed."""
    if not styles:
        return None
    return styles[0] if len(styles) == 1 else rng.choice(styles)


@dataclass(frozen=True)
class StyleBook:
    """The catalog, and which styles draw the benchmark, pre-training, the held-out set and the
    check sets."""

    catalog: dict[str, Style]
    heldout_family: str
    synth: tuple[str, ...]
    pretrain: tuple[str, ...]
    augment: tuple[str, ...] = ()
    check_families: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg) -> StyleBook:
        """Build from a :class:`tokenfocus.config.StylesConfig`, refusing a held-out or check
        style in the styles any model learns from."""
        catalog = {n: Style.from_params(n, dict(raw or {})) for n, raw in cfg.catalog.items()}
        catalog.setdefault("classic", Style())
        checks = tuple(cfg.check_families)
        book = cls(
            catalog,
            cfg.heldout_family,
            tuple(cfg.synth),
            tuple(cfg.pretrain),
            tuple(cfg.augment or ()),
            checks,
        )
        for use in ("synth", "pretrain"):
            book.learned(getattr(book, use), f"styles.{use}")
        book.augmenting()  # styles.augment checked here too, not first when SynthMuse draws
        if cfg.heldout_family and not book.heldout:
            raise StyleError(
                f"styles.heldout_family: no style of family {cfg.heldout_family!r} in the catalog"
            )
        for fam in checks:
            if fam == cfg.heldout_family or checks.count(fam) > 1:
                raise StyleError(f"styles.check_families: {fam!r} is named twice (or is the held-out family)")
            if not book.family(fam):
                raise StyleError(f"styles.check_families: no style of family {fam!r} in the catalog")
        return book

    def learned(self, names, where: str) -> tuple[Style, ...]:
        """The styles ``names`` that a model learns from, refusing an empty list, an unknown
        style or one of the held-out or check families; ``where`` names the list in the error."""
        if not names:
            raise StyleError(f"{where}: empty; name at least one style of styles.catalog")
        for n in names:
            if n not in self.catalog:
                raise StyleError(f"{where}: unknown style {n!r}; the catalog has {sorted(self.catalog)}")
            fam = self.catalog[n].family
            if fam == self.heldout_family or fam in self.check_families:
                kind = "held-out" if fam == self.heldout_family else "check"
                raise StyleError(
                    f"{where}: {n!r} belongs to the {kind} family {fam!r}, which no model may learn from"
                )
        return tuple(self.catalog[n] for n in names)

    def augmenting(self) -> tuple[Style, ...]:
        """The styles fine-tuning's redrawings are drawn in: ``augment`` (a style named k times
        drawn k times as often), or, when it is empty, each style of ``pretrain`` beside
        ``synth`` once."""
        if self.augment:
            return self.learned(self.augment, "styles.augment")
        return tuple(dict.fromkeys(s for s in self.styles("pretrain") if s.name not in self.synth))

    @property
    def heldout(self) -> tuple[Style, ...]:
        """The held-out family's styles (empty when none is set)."""
        return self.family(self.heldout_family)

    def family(self, name: str) -> tuple[Style, ...]:
        """The catalog's styles of family ``name`` (empty for an empty name)."""
        return tuple(s for s in self.catalog.values() if name and s.family == name)

    def styles(self, use: str) -> tuple[Style, ...]:
        """The styles of one use: ``synth``, ``pretrain`` or ``heldout``."""
        return self.heldout if use == "heldout" else tuple(self.catalog[n] for n in getattr(self, use))
