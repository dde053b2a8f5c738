"""scripts/gap_decomposition.py: a family's tables borrow one part of the test table's answers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gap_decomposition  # noqa: E402


def _row(path: str, score: float, p: float) -> dict:
    return {
        "img_path": path,
        "score": score,
        "distribution": [0.2] * 5,
        "elements": {"circle (object)": p, "two circles (counting)": p, "red circles (color)": p},
    }


def _tables(score: float, p: float) -> dict[str, list[dict]]:
    return {s: [_row("a.png", score, p), _row("b.png", score, p)] for s in ("qwen", "gemma")}


def test_one_category_is_borrowed_and_nothing_else_moves():
    drawn, test = _tables(2.0, 0.1), _tables(4.0, 0.9)
    got = gap_decomposition.borrow(drawn, test, "elements", "counting")
    for rows in got.values():
        for row in rows:
            assert row["elements"] == {
                "circle (object)": 0.1,
                "two circles (counting)": 0.9,
                "red circles (color)": 0.1,
            }
            assert row["score"] == 2.0
    assert drawn["qwen"][0]["elements"]["two circles (counting)"] == 0.1  # the input is not changed


def test_every_element_or_the_scores_alone_are_borrowed():
    drawn, test = _tables(2.0, 0.1), _tables(4.0, 0.9)
    elements = gap_decomposition.borrow(drawn, test, "elements")
    assert all(p == 0.9 for rows in elements.values() for r in rows for p in r["elements"].values())
    assert all(r["score"] == 2.0 for rows in elements.values() for r in rows)
    scores = gap_decomposition.borrow(drawn, test, "scores")
    assert all(r["score"] == 4.0 for rows in scores.values() for r in rows)
    assert all(p == 0.1 for rows in scores.values() for r in rows for p in r["elements"].values())


def test_tables_of_other_pairs_are_refused_by_backbone():
    drawn, test = _tables(2.0, 0.1), _tables(4.0, 0.9)
    test["gemma"] = test["gemma"][::-1]
    test["gemma"][0]["img_path"] = "c.png"
    with pytest.raises(ValueError, match="gemma"):
        gap_decomposition.borrow(drawn, test, "scores")
