"""Probes of a scorer's element P(yes) on freshly drawn scenes (seeds of their own, never
pre-training's or the benchmark's): style invariance, relation swaps and counts off by one.

Shared by tests/model/test_style_behaviour.py (thresholds) and scripts that report the rates.
"""

from __future__ import annotations

import dataclasses
import random

from tokenfocus.pretrain.curriculum import fresh_scene
from tokenfocus.render import COUNTS, RELATIONS, SHAPES, Group, Scene, Style, render
from tokenfocus.synth import make_prompt, plural


def _clear_scene(rng: random.Random, groups: int) -> Scene:
    """A clearly drawn scene: ``groups`` groups of distinct shapes and colours, large shapes."""
    s = fresh_scene(rng, groups)
    while len(s.groups) < groups:
        s = fresh_scene(rng, groups)
    for g in s.groups:
        g.size = "large"
    return s


def style_invariance(scorer, styles: list[Style], *, n: int = 64, seed: int = 21) -> dict[str, float]:
    """Per scene, a prompt that names group 0 as a shape that is not drawn: its object element is
    false, group 1's is true. The scene is drawn once per style. Returns, per style, the share of
    elements on the right side of 0.5, and ``all``: the share right in every style at once."""
    rng = random.Random(seed)
    scenes = [_clear_scene(rng, 2) for _ in range(n)]
    claimed = []
    for s in scenes:
        c = dataclasses.replace(s, groups=[dataclasses.replace(g) for g in s.groups])
        c.groups[0].shape = rng.choice([x for x in SHAPES if all(x != h.shape for h in s.groups)])
        claimed.append(c)
    prompts = [make_prompt(c, random.Random(i), False) for i, c in enumerate(claimed)]
    keys = [[f"{c.groups[0].shape} (object)", f"{c.groups[1].shape} (object)"] for c in claimed]
    right: dict[str, list[bool]] = {}
    for style in styles:
        draw = random.Random(seed + 1)
        images = [render(s, 64, draw, style) for s in scenes]
        res = scorer(images, prompts, keys)
        right[style.name] = [
            ok
            for r, k in zip(res, keys, strict=True)
            for ok in (r.elements[k[0]] < 0.5, r.elements[k[1]] >= 0.5)
        ]
    rates = {name: sum(v) / len(v) for name, v in right.items()}
    rates["all"] = sum(all(col) for col in zip(*right.values(), strict=True)) / (2 * n)
    return rates


def relation_swap(
    scorer,
    *,
    n: int = 64,
    seed: int = 22,
    groups: int = 2,
    style: Style | None = None,
    any_size: bool = False,
) -> float:
    """Share of clearly drawn scenes where the prompt's relation swapped for its opposite ("left
    of" -> "right of", "above" -> "below") gets a lower spatial P(yes). By default two large
    single shapes in the classic drawing; ``groups``, ``style`` and ``any_size`` (small or large
    shapes) make it harder."""
    rng = random.Random(seed)
    scenes = []
    for _ in range(n):
        s = _clear_scene(rng, groups)
        s.relation = rng.choice(list(RELATIONS))
        for g in s.groups:
            g.count = 1
            if any_size:
                g.size = rng.choice(["small", "large"])
        scenes.append(s)
    if style is None:
        images = [render(s, 64, rng) for s in scenes]
    else:
        draw = random.Random(seed + 1)
        images = [render(s, 64, draw, style) for s in scenes]
    p = []
    for rel in (lambda s: s.relation, lambda s: RELATIONS[s.relation]):
        told = [dataclasses.replace(s, relation=rel(s)) for s in scenes]
        prompts = [make_prompt(t, random.Random(i), False) for i, t in enumerate(told)]
        keys = [f"{t.groups[0].shape} {t.relation} {t.groups[1].shape} (spatial)" for t in told]
        res = scorer(images, prompts, [[k] for k in keys])
        p.append([r.elements[k] for r, k in zip(res, keys, strict=True)])
    return sum(s < t for t, s in zip(*p, strict=True)) / n


def count_off_by_one(scorer, *, n: int = 64, seed: int = 23) -> float:
    """Share of one-group scenes where a count one off (one more, or one less) gets a lower
    counting P(yes) than the true count."""
    rng = random.Random(seed)
    scenes = [
        Scene([Group(rng.choice(SHAPES), rng.choice(["red", "blue", "green", "yellow"]), "large", 1 + i % 4)])
        for i in range(n)
    ]
    images = [render(s, 64, rng) for s in scenes]
    p = []
    for shift in (0, None):
        told = []
        for s in scenes:
            g = s.groups[0]
            c = (
                g.count
                if shift == 0
                else (g.count + 1 if g.count == 1 or (g.count < 4 and rng.random() < 0.5) else g.count - 1)
            )
            told.append(Scene([dataclasses.replace(g, count=c)]))
        prompts = [make_prompt(t, random.Random(i), False) for i, t in enumerate(told)]
        keys = [
            f"{COUNTS[t.groups[0].count]} {plural(t.groups[0].shape, t.groups[0].count)} (counting)"
            for t in told
        ]
        res = scorer(images, prompts, [[k] for k in keys])
        p.append([r.elements[k] for r, k in zip(res, keys, strict=True)])
    return sum(s < t for t, s in zip(*p, strict=True)) / n
