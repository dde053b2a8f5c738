"""Behavioural tests of the shipped pre-trained bases (Made-With-ML style): directional checks.

They run on the bases exactly as `make run` uses them, pulled from the DVC remote inside the
repository (`make test` pulls them first), with no pre-training or fine-tuning inside the test.
Each check draws fresh scenes (a seed of its own, not pre-training's), renders the true scene,
and compares the true prompt with one whose shape, count or colour word is swapped. A pair's
score here is the mean element P(yes) of its prompt's elements: what the ensemble builds on.
"""

import dataclasses
import random

import pytest

from tokenfocus.pretrain.curriculum import fresh_scene
from tokenfocus.render import COLORS, COUNTS, SHAPES, Scene, render
from tokenfocus.synth import elements_of, make_prompt

N = 96


def _swap(scene: Scene, kind: str, rng: random.Random) -> Scene:
    """The scene with group 0's ``kind`` replaced by a value no group has."""
    out = dataclasses.replace(scene, groups=[dataclasses.replace(g) for g in scene.groups])
    g = out.groups[0]
    if kind == "shape":
        g.shape = rng.choice([s for s in SHAPES if all(s != h.shape for h in scene.groups)])
    elif kind == "count":
        g.count = rng.choice([c for c in COUNTS if c != g.count])
    else:
        g.color = rng.choice([c for c in COLORS if all(c != h.color for h in scene.groups)])
    return out


def _pair_scores(scorer, kind: str, seed: int):
    """Per scene: (score of the true prompt, score of the swapped prompt) on the true image."""
    rng = random.Random(seed)
    scenes = [fresh_scene(rng, 2) for _ in range(N)]
    images = [render(s, 64, rng) for s in scenes]
    swapped = [_swap(s, kind, rng) for s in scenes]
    out = []
    for prompt_scenes in (scenes, swapped):
        prompts = [make_prompt(s, random.Random(i), False) for i, s in enumerate(prompt_scenes)]
        keys = [[k for k, *_ in elements_of(s)] for s in prompt_scenes]
        res = scorer(images, prompts, keys)
        out.append([sum(r.elements.values()) / len(r.elements) for r in res])
    return list(zip(*out, strict=True))


@pytest.mark.parametrize(("kind", "seed"), [("shape", 11), ("count", 12), ("color", 13)])
def test_swapping_a_word_lowers_the_score(scorer, kind, seed):
    pairs = _pair_scores(scorer, kind, seed)
    gap = sum(t - s for t, s in pairs) / len(pairs)
    lower = sum(s < t for t, s in pairs) / len(pairs)
    assert gap > 0.02 and lower > 0.6, (scorer.slug, kind, round(gap, 4), lower)


def test_an_absent_shape_gets_a_lower_p_yes_than_a_present_one(scorer):
    """The prompt names the absent shape and not the present one, so only the image can tell."""
    rng = random.Random(14)
    scenes = [fresh_scene(rng, 2) for _ in range(N)]
    images = [render(s, 64, rng) for s in scenes]
    claimed = [_swap(s, "shape", rng) for s in scenes]  # group 0 drawn as one shape, named as another
    prompts = [make_prompt(c, random.Random(i), False) for i, c in enumerate(claimed)]
    els = [
        [f"{s.groups[0].shape} (object)", f"{c.groups[0].shape} (object)"]
        for s, c in zip(scenes, claimed, strict=True)
    ]
    res = scorer(images, prompts, els)
    present_p = [r.elements[e[0]] for r, e in zip(res, els, strict=True)]
    absent_p = [r.elements[e[1]] for r, e in zip(res, els, strict=True)]
    gap = sum(p - a for p, a in zip(present_p, absent_p, strict=True)) / N
    lower = sum(a < p for p, a in zip(present_p, absent_p, strict=True)) / N
    assert gap > 0.05 and lower > 0.7, (scorer.slug, round(gap, 4), lower)
