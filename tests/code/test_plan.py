"""`tokenfocus backbones plan`: parameter counts from the config alone, checked against real models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenfocus.cli import app
from tokenfocus.config import load_params
from tokenfocus.plan import load_config, plan

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("slug", ["qwen2_vl_tiny", "qwen2_5_vl_tiny", "internvl_tiny", "fastvlm_gemma"])
def test_counts_from_the_config_equal_the_loaded_models(tiny_params, slug):
    from tokenfocus.backbones import apply_lora, load_model_and_processor

    bb = tiny_params.backbone(slug)
    lora = dataclasses.replace(bb, tuning="lora")
    got = plan(load_config(bb.source), lora, tiny_params.train)
    model, _ = load_model_and_processor(bb.source, bb)
    assert got.params_total == sum(p.numel() for p in model.parameters())
    assert got.params_language + got.params_vision == got.params_total
    params = dataclasses.replace(tiny_params, backbones={**tiny_params.backbones, slug: lora})
    peft_model = apply_lora(model, slug, params)
    assert got.trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert got.train_gib > got.weights_gib > 0


def test_the_readme_gpu_examples_plan_from_their_configs_only():
    """docs/gpu/params-gpu.yaml, as the README shows it: counts match the published model sizes
    (Qwen2.5-VL-7B-Instruct 8.29 B, InternVL3-1B 0.94 B) without a single weight on disk."""
    runner = CliRunner()
    for slug, folder, billions in (
        ("qwen2_5_vl_7b", "Qwen2.5-VL-7B-Instruct", 8.29),
        ("internvl3_1b", "InternVL3-1B-hf", 0.94),
    ):
        result = runner.invoke(
            app,
            [
                "backbones",
                "plan",
                "--params",
                str(ROOT / "docs/gpu/params-gpu.yaml"),
                "-b",
                slug,
                "--config",
                str(ROOT / "docs/gpu/configs" / folder / "config.json"),
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        got = json.loads(result.output[result.output.index("{") :])[slug]
        assert got["params_total"] / 1e9 == pytest.approx(billions, abs=0.005)
        assert got["trainable"] < got["params_total"] / 50  # LoRA on the language model only
        assert got["weights_gib"] == pytest.approx(
            got["params_total"] * 2 / 2**30 + got["trainable"] * 4 / 2**30
        )
    # the example params load as the project's own
    assert load_params(ROOT / "docs/gpu/params-gpu.yaml").backbone("qwen2_5_vl_7b").max_pixels > 0


def test_a_missing_config_names_the_source_and_the_way_out():
    result = CliRunner().invoke(
        app, ["backbones", "plan", "--params", str(ROOT / "docs/gpu/params-gpu.yaml"), "-b", "qwen2_5_vl_7b"]
    )
    assert result.exit_code == 1
    assert "no config for 'Qwen/Qwen2.5-VL-7B-Instruct'" in result.output and "--config" in result.output


def test_the_eight_gpu_recipe_plans_per_rank():
    """docs/gpu/params-gpu-8.yaml: each of 8 ranks holds the whole model and 4 of the 32 examples,
    so activations are an eighth of one process's, and an all-reduce bucket comes on top."""
    p = load_params(ROOT / "docs/gpu/params-gpu-8.yaml")
    bb = p.backbone("qwen2_5_vl_7b")
    assert bb.nproc == 8 and p.train.batch_size % bb.nproc == 0
    cfg = load_config(bb.source, str(ROOT / "docs/gpu/configs/Qwen2.5-VL-7B-Instruct/config.json"))
    one, eight = plan(cfg, bb, p.train, nproc=1), plan(cfg, bb, p.train, nproc=8)
    assert (one.rows_per_step, eight.rows_per_step) == (64, 8)
    assert eight.activations_gib == pytest.approx(one.activations_gib / 8)
    assert eight.weights_gib == one.weights_gib and eight.allreduce_gib > 0 == one.allreduce_gib
    assert eight.train_gib < one.train_gib
