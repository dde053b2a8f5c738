"""Counting elements read from the parts of the image (tokenfocus/scoring/counting.py)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tokenfocus.config import GroundingConfig
from tokenfocus.scoring.counting import (
    Count,
    convolve,
    count_keys,
    counted_probability,
    parse_count,
    part_distribution,
)
from tokenfocus.typed import ConfigError, build

ROOT = Path(__file__).resolve().parents[2]
CFG = GroundingConfig()
PROMPT = "two small green stars left of three small green crosses and one small yellow diamond"
KEYS = ["star (object)", "cross (object)", "diamond (object)"]


@pytest.mark.parametrize(
    ("key", "prompt", "keys", "want"),
    [
        ("three crosses (counting)", PROMPT, KEYS, Count("cross", "crosses", 3)),
        ("one diamond (counting)", PROMPT, KEYS, Count("diamond", "diamonds", 1)),
        # EvalMuse's short form: the first object the prompt mentions after the number word
        ("two (counting)", PROMPT, KEYS, Count("star", "stars", 2)),
        ("three (counting)", PROMPT, KEYS, Count("cross", "crosses", 3)),
        ("one (counting)", PROMPT, KEYS, Count("diamond", "diamonds", 1)),
        # no object element: the key's own noun, made singular where its plural is regular
        ("two circles (counting)", "two circles", [], Count("circle", "circles", 2)),
        ("4 boxes (counting)", "4 boxes", [], Count("box", "boxes", 4)),
    ],
)
def test_a_counting_key_names_its_object_and_number(key, prompt, keys, want):
    assert parse_count(key, prompt, keys, CFG) == want


@pytest.mark.parametrize(
    ("key", "prompt", "keys"),
    [
        ("many crosses (counting)", PROMPT, KEYS),  # no number
        ("twelve crosses (counting)", PROMPT, KEYS),  # past what two parts of count_max hold
        ("two people (counting)", "two people", []),  # an irregular plural no object element names
        ("two (counting)", "a dog and two", ["dog (object)"]),  # no object after the number
        ("red cross (color)", PROMPT, KEYS),  # not a counting element
    ],
)
def test_a_key_that_cannot_be_counted_keeps_its_question(key, prompt, keys):
    assert parse_count(key, prompt, keys, CFG) is None


def test_counting_off_reads_no_key():
    off = GroundingConfig(count_categories=[])
    assert parse_count("three crosses (counting)", PROMPT, KEYS, off) is None


def test_count_keys_ask_the_object_and_each_count():
    assert count_keys(Count("cross", "crosses", 3), CFG) == [
        "cross (object)",
        "one cross (counting)",
        "two crosses (counting)",
        "three crosses (counting)",
        "four crosses (counting)",
    ]


def test_the_parts_counts_add_up_and_an_empty_part_adds_nothing():
    one, two = part_distribution(np.array([1.0, 1, 0, 0, 0])), part_distribution(np.array([1.0, 0, 1, 0, 0]))
    assert convolve(one, two).tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0]
    empty = part_distribution(np.array([0.0, 0.9, 0.9, 0.9, 0.9]))
    assert empty[0] == 1.0
    unsure = part_distribution(np.array([0.5, 1.0, 1.0, 0.0, 0.0]))
    np.testing.assert_allclose(unsure, [0.5, 0.25, 0.25, 0, 0])
    np.testing.assert_allclose(convolve(empty, unsure)[:5], unsure)


def test_the_probability_is_the_mean_of_the_answer_and_the_parts_reading():
    sure = [([1.0, 1, 0, 0, 0], [1.0, 0, 1, 0, 0])] * 4  # every cut: one on one side, two on the other
    assert counted_probability(0.2, 3, sure) == pytest.approx(0.6)  # the likeliest count: reading 1
    assert counted_probability(0.9, 2, sure) == pytest.approx(0.45)  # a count the parts rule out
    # cuts that disagree: the claimed count's probability over the likeliest's
    split = [([1.0, 1, 0, 0, 0], [1.0, 0, 1, 0, 0]), ([1.0, 1, 0, 0, 0], [1.0, 1, 0, 0, 0])]
    assert counted_probability(0.0, 2, split) == pytest.approx(0.5)


def test_every_part_of_a_split_adds_to_the_count_and_splits_of_more_parts_hold_more():
    one, none = [1.0, 1, 0, 0, 0], [0.0, 0, 0, 0, 0]
    bands = [one, one, one]  # three bands, one circle each: three in all
    cells = [one, one, one, none]  # four cells: three circles
    assert counted_probability(0.0, 3, [bands, cells]) == pytest.approx(0.5)  # reading 1
    assert counted_probability(0.0, 2, [bands, cells]) == pytest.approx(0.0)
    # a split of two parts holds at most 8 (2 x count_max), one of four 16: padded, not cut off
    four = [[1.0, 0, 0, 0, 1]] * 4
    assert counted_probability(0.0, 16, [four, [one, one]]) == pytest.approx(0.5)
    assert counted_probability(0.0, 2, [four, [one, one]]) == pytest.approx(0.5)  # the mean: a tie
    assert counted_probability(1.0, 20, [four]) == pytest.approx(0.5)  # past any split: reading 0


def test_the_count_views_split_the_image_as_the_config_says():
    from tokenfocus.scoring.grounding import _count_splits

    cuts = _count_splits(7, GroundingConfig(count_views=["cuts"]))
    assert cuts == [[(7, e, c, True), (7, e, c, False)] for e in ("left", "top") for c in (0.333, 0.667)]
    across, down, cells = _count_splits(7, GroundingConfig(count_views=["bands", "cells"], count_grid=3))
    # the outer bands are the relation's views (drawn and asked once), the middle one a band of its own
    assert across == [(7, "left", 0.333, True), (7, "band", "left", 0.333, 0.667), (7, "left", 0.667, False)]
    assert down == [(7, "top", 0.333, True), (7, "band", "top", 0.333, 0.667), (7, "top", 0.667, False)]
    assert len(cells) == 9 and len(set(cells)) == 9
    assert len(_count_splits(0, GroundingConfig(count_views=["bands"], cuts=[0.25, 0.5, 0.75]))[1]) == 4


def test_the_bands_and_cells_of_an_image_tile_it():
    """Each pixel is kept in exactly one band of a split and one cell: the parts' counts add up."""
    from PIL import Image

    from tokenfocus.scoring.grounding import _canvas, _count_splits, _draw

    rng = np.random.default_rng(0)
    a = rng.integers(1, 255, (37, 50, 3), dtype=np.uint8)  # odd sides
    a[rng.random((37, 50)) < 0.6] = 0  # most pixels black: the median, what a hidden pixel is filled with
    image = Image.fromarray(a)
    canvas = _canvas(image)
    assert canvas[1].tolist() == [0, 0, 0]
    for parts in _count_splits(0, GroundingConfig()):
        kept = sum((np.asarray(_draw(v, image, canvas)) != 0).any(-1).astype(int) for v in parts)
        assert (kept == (a != 0).any(-1)).all(), parts


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"count_max": 0}, "count_max"),
        ({"numbers": {"two": 0}}, "numbers"),
        ({"count_views": ["quarters"]}, "count_views"),
        ({"count_views": []}, "count_views"),
        ({"count_grid": 1}, "count_grid"),
    ],
)
def test_a_bad_counting_config_is_refused_by_name(raw, words):
    with pytest.raises(ConfigError, match=words):
        build(GroundingConfig, raw, "score.grounding")


def _scene(count: int, seed: int):
    import random

    from tokenfocus.render import Group, Scene, render

    scene = Scene(
        [Group("circle", "red", "large", count), Group("star", "blue", "large", 1)], relation="left of"
    )
    return render(scene, 64, random.Random(seed))


def test_the_scorer_reads_counts_from_the_parts_and_shares_the_views(gemma):
    """On the shipped Gemma base: counting elements move to the mean of their answer and the parts'
    reading, whatever else the pair asks; every other element keeps its answer; pairs read a few
    at a time read the same."""
    from tokenfocus.scoring.grounding import ground

    images = [_scene(n, seed) for n, seed in ((1, 0), (3, 1), (2, 2))]
    prompts = [
        "one red circle left of one blue star",
        "three red circles left of one blue star",
        "two red circles",
    ]
    keys = [
        ["circle (object)", "star (object)", "one circle (counting)", "circle left of star (spatial)"],
        ["circle (object)", "three circles (counting)", "two circles (counting)"],
        ["circle (object)", "red circles (color)", "two (counting)"],
    ]
    base = gemma.elements_plain(images, prompts, keys)
    runs = []
    for at_a_time in (1, 3):
        probs = [dict(p) for p in base]
        assert ground(gemma.elements_plain, images, prompts, keys, probs, CFG, pairs_at_a_time=at_a_time) == 5
        runs.append(probs)
    for got, want in zip(*runs, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    counting = [(i, k) for i, ks in enumerate(keys) for k in ks if k.endswith("(counting)")]
    for i, k in counting:
        assert runs[0][i][k] != pytest.approx(base[i][k], abs=1e-4), k  # read from the parts
        assert 0.0 <= runs[0][i][k] <= 1.0
    for i, ks in enumerate(keys):
        for k in ks:
            if k.endswith(("(object)", "(color)")):
                assert runs[0][i][k] == base[i][k], k
    # the same counting element with the relation's views shared or not: the same reading
    alone = [dict(base[0])]
    ground(gemma.elements_plain, images[:1], prompts[:1], [["one circle (counting)"]], alone, CFG)
    assert alone[0]["one circle (counting)"] == pytest.approx(runs[0][0]["one circle (counting)"], abs=1e-5)
    # and the scorer's own path agrees with mirror() then ground() over its plain questions: the
    # count's own answer is the mean of both views' before the parts are read
    from tokenfocus.scoring.mirror import mirror

    assert "counting" in CFG.mirror_categories
    probs = [dict(p) for p in base]
    mirror(gemma.elements_plain, images, prompts, probs, CFG.mirror_categories)
    ground(gemma.elements_plain, images, prompts, keys, probs, CFG)
    saved = gemma.grounding  # the short key asked as it is here ("two"): naming is test_binding's
    gemma.grounding = dataclasses.replace(saved, name_categories=[])
    try:
        scored = gemma(images, prompts, keys)
    finally:
        gemma.grounding = saved
    for i, k in counting:
        assert scored[i].elements[k] == pytest.approx(probs[i][k], abs=1e-4), k
