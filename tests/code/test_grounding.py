"""Spatial elements grounded in where their objects stand (tokenfocus/scoring/grounding.py)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokenfocus.config import GroundingConfig, load_params
from tokenfocus.scoring import Scorer
from tokenfocus.scoring.grounding import Relation, grounded_probability, parse_relation, part_view
from tokenfocus.typed import ConfigError, build

ROOT = Path(__file__).resolve().parents[2]
CFG = GroundingConfig()
PROMPT = "two small green stars left of three small green circles and one small yellow diamond"
KEYS = ["star (object)", "circle (object)", "diamond (object)", "two stars (counting)"]


@pytest.mark.parametrize(
    ("key", "prompt", "keys", "want"),
    [
        ("star left of circle (spatial)", "", KEYS, Relation("star", "circle", "left")),
        ("circle below star (spatial)", "", KEYS, Relation("circle", "star", "bottom")),
        # EvalMuse's short form: the pair's objects nearest around the relation in the prompt, plurals too
        ("left of (spatial)", PROMPT, KEYS, Relation("star", "circle", "left")),
        # the longest phrase wins: "to the right of" is not read as "right of" with "to the" first
        (
            "to the right of (spatial)",
            "a cat sitting to the right of a dog",
            ["cat (animal)", "dog (animal)"],
            Relation("cat", "dog", "right"),
        ),
        ("cat to the right of dog (spatial)", "", [], Relation("cat", "dog", "right")),
    ],
)
def test_a_spatial_key_names_its_objects_and_side(key, prompt, keys, want):
    assert parse_relation(key, prompt, keys, CFG) == want


@pytest.mark.parametrize(
    ("key", "prompt", "keys"),
    [
        ("red stars (color)", PROMPT, KEYS),  # not a grounded category
        ("star next to circle (spatial)", PROMPT, KEYS),  # no relation the config knows
        ("left of (spatial)", "stars left of a tree", KEYS),  # nothing known after the relation
        ("left of (spatial)", PROMPT.replace("left of", "near"), KEYS),  # the span is not in the prompt
        ("left of (spatial)", "stars left of stars", KEYS),  # one object on both sides
        ("star left of circle", PROMPT, KEYS),  # no category at all
    ],
)
def test_a_key_that_cannot_be_grounded_keeps_its_question(key, prompt, keys):
    assert parse_relation(key, prompt, keys, CFG) is None


def test_a_part_view_hides_the_rest_with_the_median_colour():
    a = np.full((6, 8, 3), 100, np.uint8)
    a[:, :2] = 250  # a bright strip on the left edge
    image = Image.fromarray(a)
    left = np.asarray(part_view(image, "left", 0.25, True))[..., 0]
    rest = np.asarray(part_view(image, "left", 0.25, False))[..., 0]
    assert (left[:, :2] == 250).all() and (left[:, 2:] == 100).all()
    assert (rest[:, :2] == 100).all()  # the strip is hidden: the median colour stands in
    top = np.asarray(part_view(Image.fromarray(a.transpose(1, 0, 2).copy()), "top", 0.25, False))[..., 0]
    assert (top[:2] == 100).all() and top.shape == (8, 6)
    assert part_view(image, "left", 0.5, True).size == image.size


def test_the_probability_follows_where_each_object_stands():
    sure, none = (1.0, 1.0), (0.0, 0.0)
    # first object seen only on the relation's side, the second only on the other: yes
    yes = grounded_probability(sure, [(1.0, 0.0)], [(0.0, 1.0)], 3.0)
    # the other way round: no
    no = grounded_probability(sure, [(0.0, 1.0)], [(1.0, 0.0)], 3.0)
    # both on the same side: undecided
    same = grounded_probability(sure, [(1.0, 1.0)], [(0.0, 0.0)], 3.0)
    assert yes > 0.9 and no < 0.1 and same == pytest.approx(0.5)
    # an object not in the image: no, wherever the other stands
    assert grounded_probability((1.0, 0.05), [(1.0, 0.0)], [(0.0, 1.0)], 3.0) == pytest.approx(0.05)
    # cuts average: one cut that cannot tell (both on each part) halves the evidence of the other
    two = grounded_probability(sure, [(1.0, 0.0), (1.0, 1.0)], [(0.0, 1.0), none], 3.0)
    assert 0.5 < two < yes


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"relations": {"left of": "west"}}, "left/right/top/bottom"),
        ({"cuts": [0.5, 1.0]}, "strictly between 0 and 1"),
        ({"cuts": []}, "strictly between 0 and 1"),
        ({"steepness": 0}, "steepness"),
    ],
)
def test_a_bad_grounding_config_is_refused_by_name(raw, words):
    with pytest.raises(ConfigError, match=words):
        build(GroundingConfig, raw, "score.grounding")


def test_the_shipped_params_ground_what_the_defaults_ground():
    assert load_params(ROOT / "params.yaml").score.grounding == GroundingConfig()


def _scene(first_left: bool) -> Image.Image:
    from tokenfocus.render import Group, Scene, render

    groups = [Group("circle", "red", "large", 1), Group("star", "blue", "large", 1)]
    scene = Scene(groups, relation="left of" if first_left else "right of")
    import random

    return render(scene, 64, random.Random(3))


def test_the_scorer_grounds_only_spatial_elements_and_reads_the_drawn_side(gemma):
    """On the shipped Gemma base: a circle drawn left of a star, asked both ways, in both key
    forms. Grounded, the drawn relation wins; every other element keeps its question's answer."""
    image = _scene(first_left=True)
    prompt = "a red circle left of a blue star"
    keys = [
        "circle (object)",
        "star (object)",
        "red circle (color)",
        "circle left of star (spatial)",
        "circle right of star (spatial)",
        "left of (spatial)",
        "star above circle (spatial)",
    ]
    saved = gemma.grounding
    try:  # the grounding alone: the mirrored view is tests/code/test_mirror.py's
        gemma.grounding = dataclasses.replace(saved, mirror_categories=[])
        grounded = gemma([image], [prompt], [keys])[0].elements
        gemma.grounding = None
        asked = gemma([image], [prompt], [keys])[0].elements
    finally:
        gemma.grounding = saved
    for k in keys[:3]:
        assert grounded[k] == pytest.approx(asked[k], abs=1e-6), k
    assert grounded["circle left of star (spatial)"] > 0.5 > grounded["circle right of star (spatial)"]
    assert grounded["left of (spatial)"] == pytest.approx(grounded["circle left of star (spatial)"], abs=1e-6)
    # the vertical axis cannot tell two shapes drawn side by side: neither side wins clearly
    assert abs(grounded["star above circle (spatial)"] - 0.5) < abs(
        grounded["circle left of star (spatial)"] - 0.5
    )
    # asked directly, this base cannot tell the two relations apart as well (docs/styles.md)
    direct = asked["circle left of star (spatial)"] - asked["circle right of star (spatial)"]
    assert grounded["circle left of star (spatial)"] - grounded["circle right of star (spatial)"] > direct


def test_a_bundle_serves_spatial_elements_as_the_pipeline_scored_them(gemma, tmp_path):
    """The bundle records the params' grounding in each backbone's meta; Scorer.load reads it."""
    import json
    import shutil

    from tokenfocus.backbones import META_FILE

    folder = tmp_path / "bundled"
    shutil.copytree(ROOT / "models" / "base" / "fastvlm_gemma", folder)
    meta_path = folder / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta["grounding"] = {"enabled": False}
    meta_path.write_text(json.dumps(meta))
    assert Scorer.load(folder).grounding is None
    meta["grounding"] = {"cuts": [0.5], "steepness": 5.0}
    meta_path.write_text(json.dumps(meta))
    got = Scorer.load(folder).grounding
    assert got.cuts == [0.5] and got.steepness == 5.0


def test_pairs_grounded_a_few_at_a_time_read_the_same(gemma):
    """Views are drawn and asked for a few pairs at a time (bounded memory): the same P(yes)."""
    from tokenfocus.scoring.grounding import ground

    images = [_scene(True), _scene(False), _scene(True), _scene(True)]
    prompts = ["a red circle left of a blue star"] * 4
    keys = [
        ["circle (object)", "circle left of star (spatial)"],
        ["left of (spatial)"],
        ["red circle (color)"],
    ]
    # the short key's pair has no object keys: its objects come from the prompt, asked on the whole image too
    keys[1] = ["circle (object)", "star (object)", "left of (spatial)"]
    keys.append(["circle left of star (spatial)"])  # its objects asked on the whole image first
    base = gemma.elements_plain(images, prompts, keys)
    runs = []
    for at_a_time in (1, 2, 8):
        probs = [dict(p) for p in base]
        assert ground(gemma.elements_plain, images, prompts, keys, probs, CFG, pairs_at_a_time=at_a_time) == 3
        runs.append(probs)
    for probs in runs[1:]:
        for got, want in zip(probs, runs[0], strict=True):
            assert got == pytest.approx(want, abs=1e-5)
    assert runs[0][0]["circle left of star (spatial)"] > 0.5 > runs[0][1]["left of (spatial)"]
    assert runs[0][3]["circle left of star (spatial)"] == pytest.approx(
        runs[0][0]["circle left of star (spatial)"], abs=1e-5
    )
    assert runs[0][2] == base[2]  # no spatial element: untouched


@pytest.mark.parametrize("slug", ["qwen2_vl_tiny", "idefics3_tiny"])
def test_a_wide_image_grounds_alike_through_the_shared_and_the_plain_paths(tiny_params, slug):
    """A photograph is rarely square, and a dynamic-resolution family sees every view at the
    image's own size: the views keep it, and the prefix path reads them as the plain one does."""
    import random

    from tokenfocus.render import Group, Scene, render

    scene = Scene([Group("circle", "red", "large", 1), Group("star", "blue", "large", 1)], relation="left of")
    image = render(scene, 64, random.Random(5)).resize((96, 64))
    assert part_view(image, "left", 0.333, True).size == (96, 64)
    keys = ["circle (object)", "star (object)", "circle left of star (spatial)", "above (spatial)"]
    prompt = "a red circle left of a blue star above a square"
    reused = Scorer.load(tiny_params.backbone(slug).source, batch_size=4)
    plain = Scorer.load(tiny_params.backbone(slug).source, batch_size=4, prefix_reuse=False)
    a, b = reused([image], [prompt], [keys])[0].elements, plain([image], [prompt], [keys])[0].elements
    assert all(0.0 <= a[k] <= 1.0 for k in keys)
    assert all(a[k] == pytest.approx(b[k], abs=1e-4) for k in keys)
    # "above" finds no object key after it ("square" is not one of the pair's elements): it keeps
    # its question's answer, which the same scorer gives with the grounding off
    reused.grounding = None
    assert reused([image], [prompt], [keys])[0].elements["above (spatial)"] == pytest.approx(
        a["above (spatial)"], abs=1e-6
    )
