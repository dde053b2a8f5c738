"""scripts/blank_probe.py: the probe's images hold no shape, and its prompts name shapes."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import blank_probe  # noqa: E402

from tokenfocus.render import SHAPES  # noqa: E402
from tokenfocus.render.styles import Style  # noqa: E402


def test_classic_empty_scenes_are_one_flat_colour_and_their_prompts_name_shapes():
    images, prompts = blank_probe.blank_scenes((Style(),), 12, 64)
    assert len(images) == len(prompts) == 12
    for im in images:
        assert im.size == (64, 64)
        assert len(im.getcolors(maxcolors=4) or []) == 1  # the backdrop alone: no shape drawn
    for p in prompts:
        assert any(shape in p for shape in SHAPES)


def test_the_same_seed_draws_the_same_images():
    a, pa = blank_probe.blank_scenes((Style(),), 4, 32, seed=3)
    b, pb = blank_probe.blank_scenes((Style(),), 4, 32, seed=3)
    assert pa == pb and [x.tobytes() for x in a] == [y.tobytes() for y in b]


def test_the_probe_reads_the_fine_tuned_models_unless_given_a_folder_of_models():
    from tokenfocus.config import load_params

    params = load_params(ROOT / "params.yaml")
    assert blank_probe.model_dir(params, "fastvlm_gemma", None) == (
        ROOT / params.train.out / "fastvlm_gemma" / "model"
    )
    assert blank_probe.model_dir(params, "fastvlm_gemma", Path("models/base")) == Path(
        "models/base/fastvlm_gemma"
    )
