"""Behaviour of what is served: the fine-tuned ensemble's overall 1..5 score (Made-With-ML style
directional and minimum-functionality checks), through the bundle the registry serves.

The ensemble is the ``gate`` fixture's good one (tests/gate.py): the shipped Gemma base, fine-tuned
and stacked on a quarter of SynthMuse. Scenes are fresh (their own seeds), drawn by the renderer.
"""

from __future__ import annotations

import random

import pytest

from tests.gate import SLUG, inside
from tests.model.test_behaviour import _swap
from tokenfocus.pretrain.curriculum import fresh_scene
from tokenfocus.render import render
from tokenfocus.synth import elements_of, make_prompt

N = 96


@pytest.fixture(scope="module", params=["ensemble", "fine-tuned backbone"])
def served(request, gate, tmp_path_factory):
    """The served ensemble's 1..5 score, and its fine-tuned backbone alone: the mean of its element
    P(yes). Not the backbone's own 1..5 answer: that needs the full fine-tuning budget (1,200 steps,
    test SRCC 0.63 in docs/results.md); after the 2 steps a test can afford it is flat (measured:
    swapping a word moves it by 0.000 on average), so it would prove nothing."""
    from tokenfocus.scoring import Scorer
    from tokenfocus.serving.ensemble import EnsembleScorer, bundle

    p, d = gate
    with inside(d):
        if request.param == "ensemble":
            ens = EnsembleScorer(bundle(p, tmp_path_factory.mktemp("served") / "bundle"))
            return "ensemble", lambda *a: [r["total_score"] for r in ens(*a)]
        single = Scorer.load(d / p.train.out / SLUG / "model")
        return "backbone", lambda *a: [sum(r.elements.values()) / len(r.elements) for r in single(*a)]


def test_the_bundle_grounds_spatial_elements_as_the_pipeline_scored_them(gate, tmp_path):
    """The stack was fitted on grounded spatial elements (score.grounding): the served backbones
    read them the same way, from the grounding the bundle records, not from any params file."""
    import dataclasses
    import json

    from tokenfocus.backbones import META_FILE
    from tokenfocus.serving.ensemble import EnsembleScorer, bundle

    p, d = gate
    p = dataclasses.replace(
        p,
        score=dataclasses.replace(
            p.score, grounding=dataclasses.replace(p.score.grounding, cuts=[0.5], steepness=4.0)
        ),
    )
    with inside(d):
        root = bundle(p, tmp_path / "bundle")
    meta = json.loads((root / "backbones" / SLUG / META_FILE).read_text())
    assert meta["grounding"] == dataclasses.asdict(p.score.grounding)
    served = EnsembleScorer(root).scorers[SLUG].grounding
    assert served == p.score.grounding


def _score(served, images, scenes):
    prompts = [make_prompt(s, random.Random(i), False) for i, s in enumerate(scenes)]
    keys = [[k for k, *_ in elements_of(s)] for s in scenes]
    return served[1](images, prompts, keys)


@pytest.mark.parametrize(("kind", "seed"), [("shape", 21), ("color", 22)])
def test_swapping_an_element_word_lowers_the_overall_score(served, kind, seed):
    rng = random.Random(seed)
    scenes = [fresh_scene(rng, 2) for _ in range(N)]
    images = [render(s, 64, rng) for s in scenes]
    true = _score(served, images, scenes)
    swapped = _score(served, images, [_swap(s, kind, rng) for s in scenes])
    lower = sum(s < t for t, s in zip(true, swapped, strict=True)) / N
    gap = sum(t - s for t, s in zip(true, swapped, strict=True)) / N
    least_lower, least_gap = SWAP[served[0], kind]
    assert lower > least_lower and gap > least_gap, (served[0], kind, lower, gap)


def test_a_prompt_scores_higher_on_its_own_scene_than_on_another(served):
    rng = random.Random(23)
    scenes = [fresh_scene(rng, 3) for _ in range(N)]
    images = [render(s, 64, rng) for s in scenes]
    own = _score(served, images, scenes)
    other = _score(served, images[1:] + images[:1], scenes)  # each prompt on the next scene's image
    higher = sum(o > x for o, x in zip(own, other, strict=True)) / N
    gap = sum(o - x for o, x in zip(own, other, strict=True)) / N
    least_higher, least_gap = MISMATCH[served[0]]
    assert higher > least_higher and gap > least_gap, (served[0], higher, gap)


#: (share of pairs, mean gap), close to what each reaches with these seeds, so that a real
#: regression fails. Measured: ensemble (1..5 score) shape 1.00 / 2.44, colour 0.99 / 0.34, own
#: scene 0.99 / 2.50; fine-tuned backbone (mean element P(yes)) 1.00 / 0.616, 0.99 / 0.124, 0.99 /
#: 0.646. Since SynthMuse's labels bind an element to its shape and the scorer holds a count, colour
#: or size to its object (docs/styles.md), a swapped shape takes its group's other elements down
#: with it (before: ensemble shape 1.18, own scene 2.01; backbone 0.150 and 0.346), and the stack
#: weighs colour, now partly told by the object, less (its colour gap 0.50 before)
SWAP = {
    ("ensemble", "shape"): (0.95, 1.8),
    ("ensemble", "color"): (0.95, 0.25),
    ("backbone", "shape"): (0.95, 0.46),
    ("backbone", "color"): (0.95, 0.09),
}
MISMATCH = {"ensemble": (0.95, 1.9), "backbone": (0.95, 0.48)}
