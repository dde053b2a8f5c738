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


@pytest.mark.parametrize(
    ("slug", "whole"),
    [
        ("qwen2_vl_tiny", []),
        ("qwen2_5_vl_tiny", []),
        ("internvl_tiny", []),
        ("fastvlm_gemma", []),
        ("fastvlm_gemma", ["multi_modal_projector"]),  # a projector trained whole beside the adapter
        ("qwen2_vl_tiny", ["merger"]),  # Qwen2-VL's projector, kept inside its tower
    ],
    ids=lambda v: ("+".join(v) or "adapter") if isinstance(v, list) else v,
)
def test_counts_from_the_config_equal_the_loaded_models(tiny_params, slug, whole):
    from tokenfocus.backbones import load_model_and_processor
    from tokenfocus.lora import apply_lora

    bb = tiny_params.backbone(slug)
    lora = dataclasses.replace(bb, tuning="lora", lora=dataclasses.replace(bb.lora, modules_to_save=whole))
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


class LiveBytes:
    """Peak bytes of the tensors that torch ops create while it is active, counted per storage at
    the dispatcher (every aten op's outputs; a storage counts until its last tensor is freed).
    Exact and the same on every run, unlike the RSS of a process whose allocator keeps memory."""

    def __init__(self):
        self.now = self.peak = 0
        self.refs: dict[int, list[int]] = {}

    def __enter__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in torch.utils._pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor) and t.device.type != "meta":
                        outer._track(t)
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)

    def _track(self, t) -> None:
        import weakref

        key = t.untyped_storage().data_ptr()
        entry = self.refs.setdefault(key, [0, t.untyped_storage().nbytes()])
        if entry[0] == 0:
            self.now += entry[1]
            self.peak = max(self.peak, self.now)
        entry[0] += 1
        weakref.finalize(t, self._free, key)

    def _free(self, key: int) -> None:
        entry = self.refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.now -= entry[1]
            del self.refs[key]


@pytest.mark.parametrize("budget_rows", [None, 3])
def test_the_plans_kv_copies_match_what_scoring_allocates(tiny_params, small_data, budget_rows):
    """The element questions' KV copies, as `backbones plan` sizes them (tokenfocus/plan.py
    score_memory), against the bytes the scorer's element rows really allocate, at a prefix of
    256 image tokens where the copies dominate (a tiny Qwen2-VL, as in the shared-prefix bench)."""
    import torch

    from tokenfocus.config import BackboneConfig, ScoreConfig
    from tokenfocus.evalmuse import load_records
    from tokenfocus.images import load_images
    from tokenfocus.plan import score_memory
    from tokenfocus.prefix import extend, ids_after, kv_bytes, prefill
    from tokenfocus.scoring import Scorer, encode
    from tokenfocus.tiny import build_tiny, corpus_from

    out = Path(tiny_params.train.out).parent / "plan_qwen2_vl_256"
    if not out.exists():
        cfg = BackboneConfig(source=str(out), family="qwen2_vl", image_size=256)
        build_tiny("plan", cfg, tiny_params.prompts, corpus_from(small_data), out)
    recs = load_records(small_data / "train_list.json")[:4]
    ims = load_images(small_data / "images", [r.img_path for r in recs])
    imgs = [ims[r.img_path].resize((256, 256)) for r in recs]
    els = [[e.key for e in r.elements] * 4 for r in recs]  # 4x the elements: several full chunks
    s = Scorer.load(out, batch_size=4)
    with torch.inference_mode():
        image = prefill(s.model, encode(s.processor, [s.parts.head] * 4, imgs), s._rope_state)
        ctx = ids_after(
            s.processor.tokenizer, s.parts.head, ["Prompt : two red circles . Does the image show"] * 4
        )
        _, words = extend(s.model, image, torch.arange(4), ctx, s._pad, keep=True)
    seq = words.mask.shape[1]
    per_token = kv_bytes(words.cache) // (4 * seq)
    if budget_rows:
        s.kv_budget = budget_rows * seq * per_token
    score = ScoreConfig(batch_size=4, kv_budget_mib=s.kv_budget / 2**20)
    text = s.model.config.get_text_config()
    layers, group = text.num_hidden_layers, text.num_attention_heads // text.num_key_value_heads
    _, _, planned = score_memory(score, seq, per_token, 64, 4, 0, layers=layers, group=group)
    rows = s.element_chunk(words)
    assert rows == (budget_rows or 16)  # the plan's rows are the scorer's
    assert planned == int(rows * seq * per_token * (1 + (1 + group) / layers))
    probs: list[dict] = [{} for _ in recs]
    with torch.inference_mode(), LiveBytes() as live:
        s._element_rows(words, list(range(4)), els, probs)
    # an upper bound, and a close one: measured 1.10x the peak on this family (2 layers, so one
    # layer's growth and grouped-query expansion weigh far more here than on a 28-layer model)
    assert live.peak <= planned <= 1.25 * live.peak, (planned, live.peak)


def test_max_patches_caps_internvl_tiles_in_the_processor_and_the_plan(tiny_params):
    """InternVL tiles an image into up to 12 crops + a thumbnail (13 x 256 image tokens); the plan
    counts them, and `max_patches` caps both what the processor does and what the plan counts."""
    from tokenfocus.backbones import load_model_and_processor

    bb = dataclasses.replace(tiny_params.backbone("internvl_tiny"), max_patches=3)
    _, processor = load_model_and_processor(bb.source, bb)
    assert processor.image_processor.max_patches == 3
    p = load_params(ROOT / "docs/gpu/params-gpu.yaml")
    config = load_config("", str(ROOT / "docs/gpu/configs/InternVL3-1B-hf/config.json"))
    capped = plan(config, p.backbone("internvl3_1b"), p.train)
    default = plan(config, dataclasses.replace(p.backbone("internvl3_1b"), max_patches=0), p.train)
    text = capped.seq_len - 5 * 256
    assert text > 0 and default.seq_len == 13 * 256 + text  # 12 tiles + thumbnail by default
    assert capped.score_gib < default.score_gib and capped.train_gib < default.train_gib
