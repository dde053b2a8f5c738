"""scripts/lever_study.py: a lever over training seeds, and the rule that keeps it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import lever_study  # noqa: E402


def _rows(changes: dict[str, list[float]]):
    """Per seed, (without, with) figures whose differences are ``changes``."""
    n = len(next(iter(changes.values())))
    return [
        ({sp: 0.8 for sp in changes}, {sp: round(0.8 + d[i], 4) for sp, d in changes.items()})
        for i in range(n)
    ]


def test_each_sets_mean_change_error_and_cells_over_the_seeds():
    got = lever_study.summary(_rows({"test": [0.002, 0.0, -0.001, 0.003], "heldout_style": [0.001] * 4}))
    test = got["sets"]["test"]
    assert test["changes"] == [0.002, 0.0, -0.001, 0.003]
    assert test["mean"] == pytest.approx(0.001)
    assert test["se"] == pytest.approx(0.0009, abs=1e-4)  # stdev 0.00183 over 4 seeds
    assert (test["up"], test["down"], test["level"]) == (2, 1, 1)
    assert got["keep"]


def test_the_rule_drops_a_lever_that_loses_test_or_any_set_past_the_floor():
    assert not lever_study.summary(_rows({"test": [-0.001, -0.001], "washed": [0.01, 0.01]}))["keep"]
    losing = _rows({"test": [0.001, 0.001], "washed": [-0.003, -0.003]})
    assert not lever_study.summary(losing)["keep"]
    assert lever_study.summary(losing, floor=0.004)["keep"]


def test_one_seed_has_no_standard_error_and_prints_as_json():
    import json

    got = lever_study.summary(_rows({"test": [0.002], "heldout_style": [-0.001]}))
    assert got["sets"]["test"]["se"] is None
    json.loads(json.dumps(got, allow_nan=False))  # strict JSON: a NaN would raise here


def test_a_side_of_several_redrawings_is_their_mean_per_set():
    """The same seed over two redrawings of fine-tuning's styled copies: each set's mean."""
    side = [{"ntire": {"test": 0.88, "washed": 0.70}}, {"ntire": {"test": 0.8822, "washed": 0.6934}}]
    assert lever_study.side_ntire(None, side) == {"test": 0.8811, "washed": 0.6967}
    assert lever_study.side_ntire(None, side[0]) == side[0]["ntire"]
