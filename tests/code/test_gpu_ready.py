"""GPU-readiness params, checked without a GPU: device choice, attention implementation, gradient
checkpointing and the dynamic-resolution pixel cap all reach the model and leave scores intact."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tokenfocus.backbones import BackboneError, load_model_and_processor, resolve_device
from tokenfocus.evalmuse import load_records
from tokenfocus.images import load_images
from tokenfocus.scoring import Scorer, encode


def test_auto_device_is_cuda_only_where_there_is_one_and_bad_names_are_clear():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(BackboneError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(BackboneError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.fixture(scope="module")
def pairs(small_data):
    recs = load_records(small_data / "train_list.json")[:4]
    images = load_images(small_data / "images", [r.img_path for r in recs])
    return (
        [images[r.img_path] for r in recs],
        [r.prompt for r in recs],
        [[e.key for e in r.elements] for r in recs],
    )


@pytest.mark.parametrize("slug", ["llava_siglip_tiny", "qwen2_vl_tiny"])
def test_attn_implementation_reaches_the_model_and_scores_agree(tiny_params, pairs, slug):
    bb = tiny_params.backbone(slug)
    eager = dataclasses.replace(bb, attn_implementation="eager")
    model, processor = load_model_and_processor(bb.source, eager)
    assert model.config._attn_implementation == "eager"
    default = Scorer.load(bb.source)
    a = Scorer(model, processor, default.prompts, slug=slug)(*pairs)
    b = default(*pairs)
    assert default.model.config._attn_implementation != "eager"  # sdpa: the two really differ
    for x, y in zip(a, b, strict=True):
        assert x.score == pytest.approx(y.score, abs=1e-4)
        assert all(abs(x.elements[k] - y.elements[k]) < 1e-4 for k in x.elements)


def test_max_pixels_caps_a_dynamic_resolution_image(tiny_params, pairs):
    bb = tiny_params.backbone("qwen2_vl_tiny")
    images, prompts, _ = pairs
    big = images[0].resize((128, 128))
    counts = {}
    for cap in (0, 32 * 32):
        _, processor = load_model_and_processor(bb.source, dataclasses.replace(bb, max_pixels=cap))
        batch = encode(
            processor,
            [
                processor.apply_chat_template(
                    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompts[0]}]}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
            ],
            [big],
        )
        counts[cap] = int(batch["image_grid_thw"].prod())
    assert counts[32 * 32] < counts[0]  # fewer patches under the cap
    assert counts[32 * 32] * 8 * 8 <= 32 * 32


@pytest.mark.parametrize("slug", ["idefics3_tiny", "qwen2_5_vl_tiny"])  # full and LoRA
def test_gradient_checkpointing_trains_the_same_weights(tiny_params, tmp_path, slug):
    from safetensors.torch import load_file

    from tokenfocus.train import Trainer

    runs = {}
    for gc in (False, True):
        bb = dataclasses.replace(tiny_params.backbone(slug), gradient_checkpointing=gc)
        p = dataclasses.replace(
            tiny_params,
            backbones={**tiny_params.backbones, slug: bb},
            train=dataclasses.replace(tiny_params.train, steps=2, eval_every=2, checkpoint_every=2),
        )
        tr = Trainer(slug, p, out=tmp_path / str(gc))
        tr.run()
        on = getattr(tr.model, "is_activation_checkpointing", None)  # transformers >= 5.x name
        assert (tr.model.is_gradient_checkpointing if on is None else on) == gc
        runs[gc] = load_file(tmp_path / str(gc) / "checkpoint" / "weights.safetensors")
    assert runs[True].keys() == runs[False].keys()
    moved = max((runs[True][k].float() - runs[False][k].float()).abs().max().item() for k in runs[True])
    assert moved < 1e-5
