"""Elements held to their object (tokenfocus/scoring/binding.py)."""

import dataclasses
import random

import pytest

from tokenfocus.config import GroundingConfig
from tokenfocus.scoring.binding import ask_as, asked_keys, bind, object_of
from tokenfocus.typed import ConfigError, build

CFG = GroundingConfig()
OBJECTS = {"square": "square (object)", "cross": "cross (object)", "circle": "circle (object)"}


@pytest.mark.parametrize(
    ("key", "prompt", "want"),
    [
        ("red squares (color)", "", "square (object)"),
        ("two crosses (counting)", "", "cross (object)"),
        ("large circle (attribute)", "", "circle (object)"),
        ("Red Squares (color)", "", "square (object)"),
        # EvalMuse's short form: the first object the prompt mentions after the key's words
        ("red (color)", "a blue circle and two red squares", "square (object)"),
        ("two (counting)", "two crosses beside a large circle", "cross (object)"),
        # no object element named, nor mentioned after it: nothing to hold it to
        ("blue stars (color)", "", None),
        ("red (color)", "two squares and a red star", None),
        ("green (color)", "two squares", None),
    ],
)
def test_an_element_finds_the_object_it_is_about(key, prompt, want):
    assert object_of(key, prompt, OBJECTS) == want


def test_each_listed_element_is_held_to_its_object_and_the_rest_keep_their_answer():
    prompts = ["two large red squares left of a circle", "a red square"]
    probs = [
        {
            "square (object)": 0.2,
            "two squares (counting)": 0.9,
            "red squares (color)": 0.1,
            "large squares (attribute)": 0.7,
            "circle (object)": 0.95,
            "square left of circle (spatial)": 0.8,
            "large (attribute)": 0.6,  # short form: the squares, mentioned after "large"
        },
        {"red square (color)": 0.9},  # no object element in the pair: kept
    ]
    bind(prompts, probs, CFG)
    assert probs[0] == {
        "square (object)": 0.2,
        "two squares (counting)": 0.2,
        "red squares (color)": 0.1,  # already below its object
        "large squares (attribute)": 0.2,
        "circle (object)": 0.95,
        "square left of circle (spatial)": 0.8,  # not a listed category (grounded on its own)
        "large (attribute)": 0.2,
    }
    assert probs[1] == {"red square (color)": 0.9}
    unbound = [{"square (object)": 0.2, "two squares (counting)": 0.9}]
    bind(prompts[:1], unbound, dataclasses.replace(CFG, bind_categories=[]))
    assert unbound == [{"square (object)": 0.2, "two squares (counting)": 0.9}]


PAIR = [
    "square (object)",
    "star (object)",
    "two (counting)",
    "red (color)",
    "small (attribute)",
    "left of (spatial)",
    "large squares (attribute)",
    "large (attribute)",
]


@pytest.mark.parametrize(
    ("key", "prompt", "want"),
    [
        # a short key: its words and the next object mention, as the prompt writes it
        ("two (counting)", "two large red squares left of a small star", "two squares (counting)"),
        ("red (color)", "two large red squares left of a small star", "red squares (color)"),
        ("small (attribute)", "two large red squares left of a small star", "small star (attribute)"),
        ("Red (color)", "Two Large Red Squares", "Red Squares (color)"),
        # the span's first place in the prompt with an object close after it
        ("a (counting)", "a picture of a star", "a star (counting)"),
        # a relation: between the objects mentioned nearest before and after it
        ("left of (spatial)", "two squares left of a star", "square left of star (spatial)"),
        ("left of (spatial)", "left of a star", "left of (spatial)"),
        ("underneath (spatial)", "a square underneath a star", "square underneath star (spatial)"),
        # a key that names its object, or an object, or of a category not named: as it is
        ("red squares (color)", "two large red squares", "red squares (color)"),
        ("square left of star (spatial)", "two squares left of a star", "square left of star (spatial)"),
        ("star (object)", "a star", "star (object)"),
        ("shiny (material)", "a shiny star", "shiny (material)"),
        # the named key is one of the pair's already: the short one is asked as it is
        ("large (attribute)", "two large red squares", "large (attribute)"),
        # no object within name_gap (3) words after the span, or none after it at all
        ("red (color)", "a star that is red", "red (color)"),
        ("red (color)", "a red and very bright and shiny square", "red (color)"),
        ("red (color)", "a red and very bright square", "red square (color)"),
    ],
)
def test_a_short_key_is_asked_with_the_object_it_is_about(key, prompt, want):
    assert ask_as(key, prompt, PAIR, CFG) == want


def test_a_key_that_names_its_objects_is_asked_as_it_is_where_the_pair_has_no_object_elements():
    """The relation probes key a pair with its relation alone: named in the key, never twice."""
    for key in ("circle left of star (spatial)", "circle to the left of star (spatial)"):
        assert ask_as(key, "a circle to the left of a star", [key], CFG) == key
    assert (
        ask_as("two circles (counting)", "two circles", ["two circles (counting)"], CFG)
        == "two circles (counting)"
    )


def test_asked_keys_map_back_to_the_pairs_own_and_naming_off_asks_them_as_they_are():
    prompts, keys = ["two large red squares left of a small star"], [PAIR]
    asked = asked_keys(prompts, keys, CFG)[0]
    assert list(asked.values()) == PAIR  # every element once, in the pair's order
    assert (
        asked["red squares (color)"] == "red (color)"
        and asked["square left of star (spatial)"] == "left of (spatial)"
    )
    off = dataclasses.replace(CFG, name_categories=[])
    for cfg in (off, None):
        assert asked_keys(prompts, keys, cfg) == [{k: k for k in PAIR}]


def test_a_bad_binding_config_is_refused_by_name():
    with pytest.raises(ConfigError, match="bind_categories must be a list"):
        build(GroundingConfig, {"bind_categories": "color"}, "score.grounding")
    with pytest.raises(ConfigError, match=r"bind_categories: \['object'\] are object_categories"):
        build(GroundingConfig, {"bind_categories": ["color", "object"]}, "score.grounding")
    with pytest.raises(ConfigError, match=r"name_categories: \['animal'\] are object_categories"):
        build(GroundingConfig, {"name_categories": ["animal"]}, "score.grounding")
    with pytest.raises(ConfigError, match="name_gap must be an integer >= 0, got -1"):
        build(GroundingConfig, {"name_gap": -1}, "score.grounding")


def test_the_scorer_holds_elements_to_their_objects_and_a_bundle_from_before_does_not(gemma, tmp_path):
    """On the shipped Gemma base, red circles drawn where the prompt asks for squares: the square's
    colour, count and size read at most what its object reads; without binding the same path reads
    them as before. A bundle whose meta predates ``bind_categories`` scores without it."""
    import json
    import shutil
    from pathlib import Path

    from tokenfocus.backbones import META_FILE
    from tokenfocus.render import Group, Scene, render
    from tokenfocus.scoring import Scorer

    images = [render(Scene([Group("circle", "red", "large", 2)]), 64, random.Random(3))]
    prompts = ["two large red squares"]
    keys = [["square (object)", "two squares (counting)", "red squares (color)", "large squares (attribute)"]]
    assert gemma.grounding.bind_categories == CFG.bind_categories
    held = gemma(images, prompts, keys)[0].elements
    saved = gemma.grounding
    gemma.grounding = dataclasses.replace(saved, bind_categories=[])
    try:
        free = gemma(images, prompts, keys)[0].elements
    finally:
        gemma.grounding = saved
    assert held["square (object)"] == free["square (object)"] < 0.5  # the base sees no square
    for k in keys[0][1:]:
        assert held[k] == min(free[k], free["square (object)"]), k
    # the base answers some of them for the red circles, above what it reads of the square
    assert any(free[k] > free["square (object)"] for k in keys[0][1:])

    folder = tmp_path / "bundled"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "base" / "fastvlm_gemma", folder)
    meta_path = folder / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta["grounding"] = {"cuts": [0.333, 0.667]}
    meta_path.write_text(json.dumps(meta))
    old = Scorer.load(folder).grounding
    assert old.bind_categories == [] and old.name_categories == []  # as that bundle was scored


def test_the_scorer_asks_a_short_key_as_its_named_form_and_answers_it_under_its_own(gemma):
    """On the shipped Gemma base: a pair keyed in EvalMuse's short form reads, under its own keys,
    exactly what the same pair keyed compositionally reads (the same questions); with naming off
    the bare spans read otherwise."""
    from tokenfocus.render import Group, Scene, render

    scene = Scene([Group("square", "red", "small", 2), Group("star", "blue", "large", 1)], "left of")
    images = [render(scene, 64, random.Random(5))] * 2
    prompt = "two small red squares left of a large blue star"
    long = [
        "square (object)",
        "star (object)",
        "two squares (counting)",
        "red squares (color)",
        "small squares (attribute)",
        "blue star (color)",
        "large star (attribute)",
        "square left of star (spatial)",
    ]
    short = [
        "square (object)",
        "star (object)",
        "two (counting)",
        "red (color)",
        "small (attribute)",
        "blue (color)",
        "large (attribute)",
        "left of (spatial)",
    ]
    named, plain = gemma(images, [prompt] * 2, [short, long])
    assert list(named.elements) == short
    assert list(named.elements.values()) == pytest.approx(list(plain.elements.values()), abs=1e-6)
    assert named.score == pytest.approx(plain.score, abs=1e-6)  # its element list named alike
    saved = gemma.grounding
    gemma.grounding = dataclasses.replace(saved, name_categories=[])
    try:
        bare = gemma(images[:1], [prompt], [short])[0].elements
    finally:
        gemma.grounding = saved
    assert bare["square (object)"] == pytest.approx(named.elements["square (object)"], abs=1e-6)
    assert any(abs(bare[k] - named.elements[k]) > 1e-3 for k in short[2:])
