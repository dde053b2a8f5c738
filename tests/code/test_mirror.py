"""Elements asked again on the mirrored image (tokenfocus/scoring/mirror.py)."""

import dataclasses
import random
from pathlib import Path

import pytest
from PIL import ImageOps

from tokenfocus.config import GroundingConfig
from tokenfocus.evalmuse import parse_element_key
from tokenfocus.scoring import Scorer
from tokenfocus.scoring.mirror import mirror, mirror_text
from tokenfocus.typed import ConfigError, build

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("circle left of star (spatial)", "circle right of star (spatial)"),
        ("to the right of the left door", "to the left of the right door"),
        ("Left of a star. RIGHT here", "Right of a star. LEFT here"),
        ("a bright leftover, all right-handed", "a bright leftover, all left-handed"),
        ("two red circles (color)", "two red circles (color)"),
    ],
)
def test_a_mirror_swaps_left_and_right_as_whole_words(text, want):
    assert mirror_text(text) == want
    assert mirror_text(want) == text


def _scenes():
    from tokenfocus.render import Group, Scene, render

    left = Scene([Group("circle", "red", "large", 1), Group("star", "blue", "small", 2)], relation="left of")
    above = Scene(
        [Group("cross", "green", "small", 3), Group("diamond", "yellow", "large", 1)], relation="above"
    )
    return [render(left, 64, random.Random(7)), render(above, 64, random.Random(8))]


PROMPTS = [
    "a large red circle left of two small blue stars",
    "three small green crosses above a large yellow diamond",
]
KEYS = [
    ["circle (object)", "red circle (color)", "circle left of star (spatial)", "two stars (counting)"],
    ["cross (object)", "large diamond (attribute)", "cross above diamond (spatial)"],
]


def test_the_listed_categories_read_the_mean_of_both_views(gemma):
    """On the shipped Gemma base: each listed element's P(yes) is the mean of its answer on the
    image and of the mirrored key's answer on the mirrored image with the mirrored prompt; the
    others keep their answer."""
    images = _scenes()
    asked = gemma.elements_plain(images, PROMPTS, KEYS)
    mirrored = gemma.elements_plain(
        [ImageOps.mirror(im) for im in images],
        [mirror_text(p) for p in PROMPTS],
        [[mirror_text(k) for k in ks] for ks in KEYS],
    )
    probs = [dict(p) for p in asked]
    listed = ["object", "spatial", "attribute"]
    assert mirror(gemma.elements_plain, images, PROMPTS, probs, listed) == 5
    moved = 0
    for i, keys in enumerate(KEYS):
        for k in keys:
            if parse_element_key(k).category in listed:
                assert probs[i][k] == pytest.approx(
                    (asked[i][k] + mirrored[i][mirror_text(k)]) / 2, abs=1e-6
                ), k
                moved += abs(probs[i][k] - asked[i][k]) > 1e-4
            else:
                assert probs[i][k] == asked[i][k], k
    assert moved >= 3  # the mirrored view is another view: its answers differ
    assert mirror(gemma.elements_plain, images, PROMPTS, [dict(p) for p in asked], []) == 0


def test_the_scorer_mirrors_before_it_grounds_and_a_bundle_from_before_does_not(gemma, tmp_path):
    """The scorer's own path (shared prefix) mirrors the listed categories, as ``mirror`` over its
    plain questions does; a bundle whose meta predates ``mirror_categories`` asks each element once."""
    import json
    import shutil

    from tokenfocus.backbones import META_FILE

    images = _scenes()
    assert gemma.grounding.mirror_categories == GroundingConfig().mirror_categories
    scored = gemma(images, PROMPTS, KEYS)
    saved = gemma.grounding
    gemma.grounding = dataclasses.replace(saved, mirror_categories=[])
    try:
        once = gemma(images, PROMPTS, KEYS)
    finally:
        gemma.grounding = saved
    probs = gemma.elements_plain(images, PROMPTS, KEYS)
    mirror(gemma.elements_plain, images, PROMPTS, probs, saved.mirror_categories)
    for i, keys in enumerate(KEYS):
        for k in keys:
            if k.endswith(("(object)", "(color)", "(attribute)")):
                assert scored[i].elements[k] == pytest.approx(probs[i][k], abs=1e-4), k
                # the same path asked once gives the same bits, so every mirrored answer moves; by
                # little where the base is sure (the 6,000-step Gemma: 0.96866 against 0.96863)
                assert scored[i].elements[k] != pytest.approx(once[i].elements[k], abs=1e-6), k
    # counting reads the mean of both views' answers with the parts: it moves as well
    assert scored[0].elements["two stars (counting)"] != pytest.approx(
        once[0].elements["two stars (counting)"], abs=1e-4
    )

    folder = tmp_path / "bundled"
    shutil.copytree(ROOT / "models" / "base" / "fastvlm_gemma", folder)
    meta_path = folder / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta["grounding"] = {"cuts": [0.333, 0.667]}
    meta_path.write_text(json.dumps(meta))
    old = Scorer.load(folder).grounding
    assert old.mirror_categories == [] and old.count_views == ["cuts"]  # as that bundle was scored


def test_a_bad_mirror_config_is_refused_by_name():
    with pytest.raises(ConfigError, match="mirror_categories"):
        build(GroundingConfig, {"mirror_categories": "object"}, "score.grounding")
