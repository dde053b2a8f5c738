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
