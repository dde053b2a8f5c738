"""scripts/count_halves.py: a count read from the two parts of a cut image (docs/styles.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import count_halves  # noqa: E402


def test_the_parts_counts_add_up():
    # left part: surely one circle; right part: surely two -> the whole holds three
    left = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    right = np.array([1.0, 0.0, 1.0, 0.0, 0.0])
    dist = count_halves.convolve(count_halves.part_distribution(left), count_halves.part_distribution(right))
    assert dist.shape == (9,)
    assert dist[3] == 1.0 and dist.sum() == 1.0


def test_an_empty_part_adds_nothing_and_an_unsure_part_spreads_the_mass():
    empty = count_halves.part_distribution(np.array([0.0, 0.9, 0.9, 0.9, 0.9]))
    assert empty[0] == 1.0  # the object is not there: a count of zero, whatever the count answers
    unsure = count_halves.part_distribution(np.array([0.5, 1.0, 1.0, 0.0, 0.0]))
    np.testing.assert_allclose(unsure, [0.5, 0.25, 0.25, 0.0, 0.0])
    np.testing.assert_allclose(count_halves.convolve(empty, unsure)[:5], unsure)


def test_the_reading_averages_the_cuts_at_the_claimed_count():
    n_views = 1 + 2 * len(count_halves.CUTS)
    answers = np.zeros((2, n_views, 5))
    answers[:, :, 0] = 1.0
    answers[:, 1::2, 1] = 1.0  # every cut: one object on the side part
    answers[:, 2::2, 2] = 1.0  # and two on the rest
    answers[:, 0, 3] = 1.0
    got = count_halves.parts_reading(answers, np.array([3, 2]))
    np.testing.assert_allclose(got, [1.0, 0.0])


def test_count_keys_name_the_object_and_each_count():
    assert count_halves.count_keys("cross") == [
        "cross (object)",
        "one cross (counting)",
        "two crosses (counting)",
        "three crosses (counting)",
        "four crosses (counting)",
    ]
