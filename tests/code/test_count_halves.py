"""scripts/count_halves.py: a count read from the two parts of a cut image (docs/styles.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import count_halves  # noqa: E402


def test_the_reading_averages_the_cuts_at_the_claimed_count():
    n_views = 1 + 2 * len(count_halves.CUTS)
    answers = np.zeros((2, n_views, 5))
    answers[:, :, 0] = 1.0
    answers[:, 1::2, 1] = 1.0  # every cut: one object on the side part
    answers[:, 2::2, 2] = 1.0  # and two on the rest
    answers[:, 0, 3] = 1.0
    got = count_halves.parts_reading(answers, np.array([3, 2]))
    np.testing.assert_allclose(got, [1.0, 0.0])


def test_the_elements_are_the_compositional_counting_keys_as_the_scorer_parses_them():
    from tokenfocus.config import GroundingConfig

    record = {
        "prompt_id": "p",
        "prompt": "three red circles left of one star",
        "element_score": {
            "circle (object)": [1, 1],
            "star (object)": [1, 1],
            "three circles (counting)": [1, 0, 0],
            "one star (counting)": [1, 1],
            "three (counting)": [1, 1],  # the short form: left to the pipeline's own measurement
            "red circles (color)": [1, 1],
        },
    }
    got = list(count_halves._elements([record], {"p": {"split": "val"}}, "val", GroundingConfig()))
    assert [(c.noun, c.number, t) for _, c, t in got] == [("circle", 3, 0.0), ("star", 1, 1.0)]
    assert not list(count_halves._elements([record], {"p": {"split": "test"}}, "val", GroundingConfig()))
