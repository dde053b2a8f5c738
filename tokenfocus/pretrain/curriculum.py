"""The pre-training curriculum's data: freshly drawn scenes and the questions asked about them.

Open questions, yes/no checks, element questions in the scoring wording, and stage 1's per-shape
targets, all from the pre-training seed alone (never the benchmark's images or labels).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from PIL import Image

from tokenfocus.config import ConfigError, PretrainConfig, PromptConfig
from tokenfocus.config.model import check_gemm
from tokenfocus.prompts import element_text
from tokenfocus.render import (
    COLORS,
    COUNTS,
    RELATIONS,
    SHAPES,
    SIZES,
    Group,
    Scene,
    Style,
    pick_style,
    random_scene,
    render,
)
from tokenfocus.synth import corrupt, elements_of, make_prompt, plural, realised

#: Open questions: their answer is the attribute's value.
OPEN = {
    "color": "what color are the {noun} ?",
    "count": "how many {noun} are there ?",
    "size": "what size are the {noun} ?",
    "shape": "what shape is {color} ?",
    "relation": "where are the {a} ?",
}

#: Yes/no checks: the attribute's true value or another one.
CHECK = {
    "color": "are the {noun} {value} ?",
    "count": "are there {value} {noun} ?",
    "size": "are the {noun} {value} ?",
    "shape": "is there a {value} ?",
    "relation": "are the {a} {value} the {b} ?",
}


ATTRIBUTES = tuple(OPEN)

#: The words the auxiliary presence loss ties to image tokens: every value of the four attributes.
VALUE_WORDS = [*SHAPES, *COLORS, *COUNTS.values(), *SIZES]


#: Errors drawn into element-question scenes: pre-training's own profile, not a benchmark generator's.
ERRORS = {
    "missing": 0.15,
    "color": 0.4,
    "shape": 0.4,
    "count": 0.4,
    "size": 0.4,
    "relation": 0.4,
    "extra": 0.15,
}


def noun(shape: str) -> str:
    """The plural noun a question uses for a group of ``shape``."""
    return plural(shape, 2)


def corpus() -> list[str]:
    """Every word the pre-training questions and answers use, for the tokenizer."""
    words = [*OPEN.values(), *CHECK.values(), " ".join(SHAPES), " ".join(map(noun, SHAPES))]
    words += [" ".join(COLORS), "small large", " ".join(COUNTS.values()), " ".join(RELATIONS), "yes no"]
    return words


def check_config(cfg: PretrainConfig) -> None:
    """Refuse settings the curriculum cannot run, naming the key."""
    if unknown := [a for a in cfg.attributes if a not in ATTRIBUTES]:
        raise ConfigError(f"pretrain.attributes: unknown {unknown}; known: {list(ATTRIBUTES)}")
    if not cfg.attributes:
        raise ConfigError("pretrain.attributes: empty; name at least one of " + str(list(ATTRIBUTES)))
    for name in ("max_groups", "tower_groups"):
        if not 1 <= getattr(cfg, name) <= 3:
            raise ConfigError(f"pretrain.{name}: {getattr(cfg, name)} is not in 1..3")
    check_gemm("pretrain.gemm", cfg.gemm)
    choices = {"count_false": ("any", "adjacent"), "tower_readout": ("pooled", "tokens")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"pretrain.{name}: {getattr(cfg, name)!r} is not {' or '.join(allowed)}")
    for name in ("tower_head_weight", "tower_lr_scale", "token_count_weight", "token_relation_weight"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"pretrain.{name}: {getattr(cfg, name)} is negative")
    if cfg.tower_head_weight > 0 and cfg.tower_groups < 2:
        why = "the heads of a one-group tower stage (tower_groups 1) cannot be kept on multi-group scenes"
        raise ConfigError(f"pretrain.tower_head_weight: {why}; set tower_groups >= 2")
    w = cfg.count_weights
    if w and (len(w) != len(COUNTS) or min(w) < 0 or sum(w[:3]) <= 0):
        raise ConfigError(f"pretrain.count_weights: {w} is not {len(COUNTS)} odds >= 0 with some on 1..3")
    if "relation" in cfg.attributes and cfg.max_groups < 2:
        raise ConfigError("pretrain.attributes: relation needs pretrain.max_groups >= 2")
    if set(cfg.attributes) == {"relation"}:  # a pool always holds one-group scenes too
        raise ConfigError("pretrain.attributes: relation alone leaves one-group scenes without a question")
    for name in ("open_frac", "element_frac", "part_frac"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"pretrain.{name}: {getattr(cfg, name)} is not in 0..1")
    if cfg.part_frac > 0 and not (cfg.element_frac > 0 and cfg.element_steps > 0):
        raise ConfigError("pretrain.part_frac: a share of stage 3's element questions; element_frac is 0")
    if cfg.open_frac + cfg.element_frac > 1.0:
        raise ConfigError("pretrain.open_frac + pretrain.element_frac: more than 1 leaves no room")
    if not 0.0 <= cfg.stage_floor < 1.0:
        raise ConfigError(f"pretrain.stage_floor: {cfg.stage_floor} is not in 0..1 (0: no guard)")
    if not 0 <= cfg.stage_retries <= 3:  # (each attempt draws its scenes from its own seed range)
        raise ConfigError(f"pretrain.stage_retries: {cfg.stage_retries} is not in 0..3")
    for name in ("steps", "tower_steps", "element_steps", "batch_size", "threads", "check_scenes"):
        if getattr(cfg, name) < 0 or (name in ("batch_size", "threads") and getattr(cfg, name) < 1):
            raise ConfigError(f"pretrain.{name}: {getattr(cfg, name)} is out of range")


def true_and_false(
    scene: Scene, kind: str, g: Group, rng: random.Random, *, count_false: str = "any"
) -> tuple[str, str]:
    """The true value of one attribute of group ``g`` and a false one that no group has.

    ``count_false``: a false count is any other count, or (``adjacent``) one more or one less.
    """
    if kind == "color":
        return g.color, rng.choice([c for c in COLORS if all(c != h.color for h in scene.groups)])
    if kind == "count":
        near = 1 if count_false == "adjacent" else len(COUNTS)
        return COUNTS[g.count], rng.choice([w for c, w in COUNTS.items() if 0 < abs(c - g.count) <= near])
    if kind == "size":
        return g.size, "small" if g.size == "large" else "large"
    if kind == "shape":
        return g.shape, rng.choice([s for s in SHAPES if all(s != h.shape for h in scene.groups)])
    return scene.relation, rng.choice([r for r in RELATIONS if r != scene.relation])


@dataclass(frozen=True)
class Question:
    kind: str  # the attribute asked about
    text: str
    answer: str
    truth: bool | None  # for a check, whether its claim is true; None for an open question


def question(
    scene: Scene,
    attributes: list[str],
    rng: random.Random,
    *,
    mode: str | None = None,
    kind: str | None = None,
    truth: bool | None = None,
    count_false: str = "any",
) -> Question:
    """One question answered truly for ``scene``: open or check (``mode``, else 1:1).

    ``kind`` and ``truth`` fix the attribute and, for a check, whether its claim is true;
    ``count_false`` which false counts a count check may claim (see :func:`true_and_false`).
    """
    kinds = [k for k in attributes if k != "relation" or scene.relation]
    kind = kind if kind in kinds else rng.choice(kinds)
    g = scene.groups[0] if kind == "relation" else rng.choice(scene.groups)
    fmt = {"noun": noun(g.shape), "color": g.color, "a": noun(g.shape)}
    if kind == "relation":
        fmt["b"] = noun(scene.groups[1].shape)
    true, false = true_and_false(scene, kind, g, rng, count_false=count_false)
    mode = mode or ("open" if rng.random() < 0.5 else "check")
    if mode == "open":
        answer = {"shape": g.shape, "relation": f"{true} the {fmt.get('b')}"}.get(kind, true)
        return Question(kind, OPEN[kind].format(**fmt), answer, None)
    truth = rng.random() < 0.5 if truth is None else truth
    return Question(
        kind, CHECK[kind].format(value=true if truth else false, **fmt), "yes" if truth else "no", truth
    )


def fresh_scene(rng: random.Random, max_groups: int, count_weights: tuple[float, ...] = ()) -> Scene:
    """A random scene of at most ``max_groups`` groups, one colour per group (so "what shape is
    red ?" and the colour checks stay unambiguous); with ``count_weights``, each group's count
    drawn anew at those odds of 1..4 (at most 3 in a three-group scene, as the renderer has it)."""
    s = random_scene(rng)
    s.groups = s.groups[:max_groups]
    if count_weights:
        for g in s.groups:
            k = 3 if len(s.groups) == 3 else 4
            g.count = rng.choices(range(1, k + 1), weights=count_weights[:k])[0]
    s.relation = s.relation if len(s.groups) >= 2 else None
    if len({g.color for g in s.groups}) < len(s.groups):
        for g, c in zip(s.groups, rng.sample(list(COLORS), len(s.groups)), strict=True):
            g.color = c
    return s


@dataclass
class Pool:
    """Freshly drawn scenes and their images, from the pre-training seed only."""

    scenes: list[Scene]
    images: list[Image.Image]

    @classmethod
    def draw(
        cls,
        n: int,
        size: int,
        seed: int,
        *,
        max_groups: int = 3,
        styles: tuple[Style, ...] | None = None,
        count_weights: tuple[float, ...] = (),
    ) -> Pool:
        """``n`` random scenes of at most ``max_groups`` groups, rendered at ``size`` pixels, each
        in a style drawn from ``styles`` (default: the classic drawing); ``count_weights``: see
        :func:`fresh_scene`."""
        rng = random.Random(seed)
        scenes = [fresh_scene(rng, max_groups, count_weights) for _ in range(n)]
        return cls(scenes, [render(s, size, rng, pick_style(styles, rng)) for s in scenes])


@dataclass(frozen=True)
class ElementQuestion:
    category: str  # object | counting | color | attribute | spatial
    text: str  # the full chat text, in the scoring wording
    answer: str  # yes | no: whether the drawn scene realises the element
    image: Image.Image
    scene: Scene  # what was drawn


def element_question(
    rng: random.Random,
    parts,
    prompts: PromptConfig,
    size: int,
    *,
    want: bool | None = None,
    styles: tuple[Style, ...] | None = None,
    bind_shape: bool = True,
    balance: bool = False,
) -> ElementQuestion:
    """A fresh prompt scene, drawn with errors in a style from ``styles``, and one of its elements asked
    in the scoring wording; realised (``bind_shape``) or not as ``want`` says, else 1:1. ``balance``:
    the category drawn first (a random element's), so that each category is half realised."""
    want, category = rng.random() < 0.5 if want is None else want, None
    while True:
        scene = random_scene(rng)
        category = rng.choice(elements_of(scene))[1] if balance and category is None else category
        drawn = corrupt(scene, ERRORS, rng)
        flags = zip(elements_of(scene), realised(scene, drawn, bind_shape=bind_shape), strict=True)
        if pick := [e for e, ok in flags if ok == want and category in (None, e[1])]:
            break
    key, category, *_ = rng.choice(pick)
    prompt = make_prompt(scene, rng, rng.random() < 0.5)
    text = element_text(parts, prompts, prompt, key)
    image = render(drawn, size, rng, pick_style(styles, rng))
    return ElementQuestion(category, text, "yes" if want else "no", image, drawn)


def presence(scenes: list[Scene]) -> torch.Tensor:
    """(B, values) targets: which attribute values some group of each drawn scene has."""
    y = torch.zeros(len(scenes), len(VALUE_WORDS))
    for r, sc in enumerate(scenes):
        for i, g in enumerate(sc.groups):
            if i in sc.missing:
                continue
            for w in (g.shape, g.color, COUNTS[g.count], g.size):
                y[r, VALUE_WORDS.index(w)] = 1.0
        for g in sc.extras:
            for w in (g.shape, g.color, COUNTS[g.count], g.size):
                y[r, VALUE_WORDS.index(w)] = 1.0
    return y


def tower_targets(scenes: list[Scene], groups: int) -> dict[str, torch.Tensor]:
    """Stage 1's labels. One-group scenes: the group's shape, colour, count and size. Scenes of up
    to ``groups`` > 1 groups: per shape (one column each), its count (0 = absent), its colour and
    its size (0 = absent), so the pooled map must keep which shape has which attributes."""
    if groups == 1:
        first = [s.groups[0] for s in scenes]
        return {
            "shape": torch.tensor([SHAPES.index(g.shape) for g in first]),
            "color": torch.tensor([list(COLORS).index(g.color) for g in first]),
            "count": torch.tensor([g.count - 1 for g in first]),
            "size": torch.tensor([list(SIZES).index(g.size) for g in first]),
        }
    y = {k: torch.zeros(len(scenes), len(SHAPES), dtype=torch.long) for k in ("count", "color", "size")}
    for r, sc in enumerate(scenes):
        # what was drawn: an element question's scene may miss a group or hold an extra one
        for g in [g for i, g in enumerate(sc.groups) if i not in sc.missing] + sc.extras:
            c = SHAPES.index(g.shape)
            y["count"][r, c] = g.count
            y["color"][r, c] = 1 + list(COLORS).index(g.color)
            y["size"][r, c] = 1 + list(SIZES).index(g.size)
    return y
