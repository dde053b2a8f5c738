"""scripts/count_errors.py: the counting cases behind docs/styles.md's "Where the stack's counting
errors are", and the generator's hook that gives each image's drawn scene."""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import SMALL, repo_styles
from tokenfocus.config import SynthConfig, load_params
from tokenfocus.render import Group, Scene
from tokenfocus.synth import generate, latent_alignment

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import count_errors  # noqa: E402

PROMPT = "two large red squares left of one small blue circle and three small green stars"


def _scene() -> Scene:
    return Scene(
        [
            Group("square", "red", "large", 2),
            Group("circle", "blue", "small", 1),
            Group("star", "green", "small", 3),
        ],
        relation="left of",
    )


def test_each_counting_element_is_sorted_by_how_its_group_was_drawn_in_both_key_forms():
    drawn = copy.deepcopy(_scene())
    drawn.groups[0].count = 3  # off by one
    drawn.groups[1].shape = "cross"  # another shape: the circle's count is about no circle
    drawn.groups[2].count = 1  # off by two
    cases = count_errors.count_cases(_scene(), drawn, PROMPT)
    assert cases["two squares (counting)"] == cases["two (counting)"] == "off by one"
    assert cases["one circle (counting)"] == cases["one (counting)"] == "group missing or another shape"
    assert cases["three stars (counting)"] == cases["three (counting)"] == "off by two or more"
    assert not any("(color)" in k or "(object)" in k for k in cases)  # counting elements only
    drawn = copy.deepcopy(_scene())
    drawn.missing.add(0)
    cases = count_errors.count_cases(_scene(), drawn, PROMPT)
    assert cases["two squares (counting)"] == "group missing or another shape"
    assert cases["one circle (counting)"] == cases["three stars (counting)"] == "count right"


def test_the_breakdown_counts_each_models_hits_per_case():
    drawn = copy.deepcopy(_scene())
    drawn.groups[0].count = 3
    scenes = {"g/0.png": (_scene(), drawn)}
    gt = {
        "square (object)": 1.0,
        "two squares (counting)": 0.0,
        "one circle (counting)": 1.0,
        "three (counting)": 1.0,
    }
    row = {"img_path": "g/0.png", "prompt": PROMPT, "gt_elements": gt}
    says_yes = {**row, "elements": dict.fromkeys(gt, 0.9)}
    says_no = {
        **row,
        "elements": {**dict.fromkeys(gt, 0.9), "two squares (counting)": 0.2, "three (counting)": 0.1},
    }
    out = count_errors.breakdown({"a": [says_yes], "b": [says_no]}, scenes)
    assert out["off by one"] == {"n": 1, "true": 0, "a": 0.0, "b": 1.0}
    assert out["count right"] == {"n": 2, "true": 2, "a": 1.0, "b": 0.5}
    assert set(out) == {"off by one", "count right"}  # a case no element falls in is left out


def test_the_generators_hook_gives_the_scene_each_images_labels_were_read_from(tmp_path):
    cfg = SynthConfig(seed=7, n_prompts=6, n_test_prompts=2, image_size=32)
    seen = {}
    generate(cfg, tmp_path / "data", on_drawn=lambda p, s, d: seen.setdefault(p, []).append((s, d)))
    latent = json.loads((tmp_path / "data" / "latent.json").read_text())
    assert set(seen) == set(latent) and all(len(v) == 1 for v in seen.values())  # every image, once
    for path, [(scene, drawn)] in seen.items():
        assert round(latent_alignment(scene, drawn, bind_shape=cfg.bind_shape), 6) == latent[path], path
    assert any(s != d for [(s, d)] in seen.values())  # the drawn scene, not the prompt's again


def test_drawn_scenes_are_those_of_the_data_and_other_data_is_refused(small_data):
    params = load_params(ROOT / "params.yaml")
    params = replace(
        params, synth=SMALL, styles=repo_styles(), validate=replace(params.validate, data=str(small_data))
    )
    scenes = count_errors.drawn_scenes(params)
    train = json.loads((small_data / "train_list.json").read_text())
    assert {r["img_path"] for r in train} <= set(scenes)
    with pytest.raises(SystemExit, match="not what params.yaml's synth block draws"):
        count_errors.drawn_scenes(replace(params, synth=replace(SMALL, seed=SMALL.seed + 1)))
