"""scripts/open_count.py: counting elements read from pre-training's open count question."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import open_count  # noqa: E402


def test_a_keys_noun_names_its_shape_in_either_number():
    assert open_count.shape_of("crosses") == "cross"
    assert open_count.shape_of("cross") == "cross"
    assert open_count.shape_of("circles") == "circle"
    assert open_count.shape_of("dogs") is None


def test_the_rows_are_the_compositional_counts_of_a_shape_from_one_to_four():
    table = [
        {
            "elements": {
                "circle (object)": 0.9,
                "three circles (counting)": 0.7,
                "one cross (counting)": 0.6,
                "three (counting)": 0.8,  # a short key names no noun
                "five stars (counting)": 0.5,  # past the open question's words
                "two dogs (counting)": 0.4,  # not a shape pre-training drew
            },
            "gt_elements": {
                "circle (object)": 1.0,
                "three circles (counting)": 0.0,
                "one cross (counting)": 1.0,
                "three (counting)": 1.0,
                "five stars (counting)": 1.0,
                "two dogs (counting)": 1.0,
            },
        }
    ]
    assert open_count.counting_rows(table) == [
        (0, "three circles (counting)", 0.7, 0.0),
        (0, "one cross (counting)", 0.6, 1.0),
    ]
