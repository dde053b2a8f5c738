"""scripts/relation_drill.py: the relation pairs behind docs/styles.md's relation-drill table."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import relation_drill  # noqa: E402

from tokenfocus.backbones import TemplateParts  # noqa: E402
from tokenfocus.config import PromptConfig  # noqa: E402
from tokenfocus.render import RELATIONS  # noqa: E402

PARTS = TemplateParts("<user><image>", "<assistant>")


def _rows(n: int) -> tuple[list, list, list, list]:
    return [f"t{i}" for i in range(n)], ["keep"] * n, [None] * n, [None] * n


def _key(text: str) -> tuple[str, str, str]:
    """(first shape, relation, second shape) of the spatial element a question asks."""
    found = re.search(r"show (\w+) (left of|right of|above|below) (\w+) \?", text)
    assert found, text
    return found.groups()


def test_pairs_ask_the_drawn_relation_and_its_opposite_of_one_image():
    texts, answers, images, scenes = relation_drill.relation_pairs(
        _rows(10), 123, 3, 2, PARTS, PromptConfig(), 64, None
    )
    assert texts[:2] == ["t0", "t1"] and texts[8:] == ["t8", "t9"]  # only rows 2..7 are replaced
    assert answers[:2] == answers[8:] == ["keep"] * 2
    for i in range(2, 8, 2):
        assert images[i] is images[i + 1] and scenes[i] is scenes[i + 1]  # one image, asked twice
        assert (answers[i], answers[i + 1]) == ("yes", "no")
        (a, told, b), (a2, turned, b2) = _key(texts[i]), _key(texts[i + 1])
        assert (a, b) == (a2, b2) == (scenes[i].groups[0].shape, scenes[i].groups[1].shape)
        assert told == scenes[i].relation and turned == RELATIONS[told]
        assert texts[i].startswith(PARTS.head) and texts[i].endswith(PARTS.tail)


def test_clean_pairs_draw_two_single_large_shapes():
    *_, scenes = relation_drill.relation_pairs(_rows(8), 7, 4, 0, PARTS, PromptConfig(), 64, None, clean=True)
    assert all(len(s.groups) == 2 and s.relation for s in scenes)
    assert {(g.count, g.size) for s in scenes for g in s.groups} == {(1, "large")}
