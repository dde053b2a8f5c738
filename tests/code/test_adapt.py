"""Test-time BatchNorm adaptation (tokenfocus/scoring/adapt.py): the tower's statistics come from
the scored images, nothing else moves, a LayerNorm tower is left alone, and the score stage scores
each split with its own statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import ImageEnhance

from tokenfocus.images import load_images
from tokenfocus.scoring.adapt import adapt_norm, adapt_to_split, norm_layers


def _images(small_data: Path, n: int, dim: float = 1.0) -> list:
    rows = json.loads((small_data / "train_list.json").read_text())[:n]
    images = load_images(small_data / "images", [r["img_path"] for r in rows])
    return [ImageEnhance.Brightness(im).enhance(dim) for im in images.values()]


def _state(layers):
    return [
        (m.running_mean.clone(), m.running_var.clone(), m.weight.clone(), m.momentum, m.training)
        for m in layers
    ]


def _restore(layers, state):
    for m, (mean, var, _, momentum, training) in zip(layers, state, strict=True):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.momentum, m.training = momentum, training


def test_the_first_layers_statistics_become_the_scored_images_own(gemma, small_data):
    import torch

    layers = norm_layers(gemma.model)
    assert len(layers) >= 5  # FastVLM's convolutional tower
    before = _state(layers)
    dark = _images(small_data, 12, dim=0.4)
    seen = []  # what reaches the first BatchNorm does not depend on any BatchNorm before it
    hook = layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        assert adapt_norm(gemma.model, gemma.processor, [dark]) == len(layers)
        x = seen[0].transpose(0, 1).flatten(1)  # channels x (images, rows, columns)
        assert torch.allclose(layers[0].running_mean, x.mean(1), atol=1e-5)
        assert torch.allclose(layers[0].running_var, x.var(1, unbiased=True), rtol=1e-4, atol=1e-6)
        assert not torch.allclose(layers[0].running_mean, before[0][0])  # it moved from the saved ones
        for m, (_, _, weight, momentum, training) in zip(layers, before, strict=True):
            assert torch.equal(m.weight, weight) and m.momentum == momentum and m.training == training
        again = _state(layers)
        adapt_norm(gemma.model, gemma.processor, [dark])
        assert all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            for a, b in zip(again, _state(layers), strict=True)
        )
    finally:
        hook.remove()
        _restore(layers, before)


def test_darker_images_read_darker_statistics_and_scores_move(gemma, small_data):
    import torch

    layers = norm_layers(gemma.model)
    before = _state(layers)
    images = _images(small_data, 8)
    prompt = json.loads((small_data / "train_list.json").read_text())[0]
    try:
        saved = gemma([images[0]], [prompt["prompt"]], [list(prompt["element_score"])])[0]
        adapt_norm(gemma.model, gemma.processor, [images])
        bright = layers[0].running_mean.clone()
        adapted = gemma([images[0]], [prompt["prompt"]], [list(prompt["element_score"])])[0]
        adapt_norm(
            gemma.model, gemma.processor, [[ImageEnhance.Brightness(im).enhance(0.3) for im in images]]
        )
        assert not torch.allclose(layers[0].running_mean, bright, atol=1e-3)
        assert adapted.score != saved.score  # the same pair, other statistics
    finally:
        _restore(layers, before)


def test_a_tower_without_batchnorm_is_left_alone(tiny_params):
    from tokenfocus.scoring import Scorer

    scorer = Scorer.load(Path(tiny_params.backbone("llava_siglip_tiny").source), batch_size=4)

    def never():
        raise AssertionError("a LayerNorm tower read images")
        yield

    assert norm_layers(scorer.model) == []
    assert adapt_norm(scorer.model, scorer.processor, never()) == 0


def _same_statistics(layers, state) -> bool:
    import torch

    return all(
        torch.equal(m.running_mean, mean)
        and torch.equal(m.running_var, var)
        and m.momentum == momentum
        and m.training == training
        for m, (mean, var, _, momentum, training) in zip(layers, state, strict=True)
    )


def test_no_images_is_an_error_that_says_so_and_keeps_the_statistics(gemma):
    layers = norm_layers(gemma.model)
    before = _state(layers)
    try:
        with pytest.raises(ValueError, match="no images"):
            adapt_norm(gemma.model, gemma.processor, [])
        assert _same_statistics(layers, before)  # not reset to zero mean and unit variance
    finally:
        _restore(layers, before)


def test_a_batch_that_fails_midway_leaves_the_saved_statistics(gemma, small_data):
    from tokenfocus.images import ImageError

    layers = norm_layers(gemma.model)
    before = _state(layers)
    counts = [m.num_batches_tracked.clone() for m in layers]

    def batches():
        yield _images(small_data, 4, dim=0.4)  # one batch estimated, then an unreadable image
        raise ImageError("broken.png: not an image")

    try:
        with pytest.raises(ImageError, match="broken.png"):
            adapt_norm(gemma.model, gemma.processor, batches())
        assert _same_statistics(layers, before)
        assert all(int(m.num_batches_tracked) == int(c) for m, c in zip(layers, counts, strict=True))
    finally:
        _restore(layers, before)


def test_a_large_split_is_estimated_from_an_evenly_spaced_bounded_subset(gemma, small_data):
    import torch

    layers = norm_layers(gemma.model)
    before = _state(layers)
    rows = json.loads((small_data / "train_list.json").read_text())[:9]
    paths = [r["img_path"] for r in rows]
    try:
        adapt_to_split(gemma, paths + paths[:3], small_data / "images", max_images=3)  # repeats count once
        subset = _state(layers)
        adapt_to_split(gemma, [paths[0], paths[3], paths[6]], small_data / "images", max_images=3)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(subset, _state(layers), strict=True))
    finally:
        _restore(layers, before)


def test_the_score_stage_scores_each_split_with_that_splits_statistics(tiny_params, tmp_path):
    import copy
    import dataclasses

    from tokenfocus.predictions import image_root, read_table, score_backbone, score_resumably, split_records
    from tokenfocus.scoring import Scorer

    slug = "fastvlm_gemma"
    base = Path(tiny_params.backbone(slug).source)
    tables = {}
    for adapt in (True, False):
        p = copy.copy(tiny_params)
        # torch's own products, as the direct scoring below runs them
        p.score = dataclasses.replace(
            tiny_params.score, adapt_norm=adapt, gemm="mkl", out=str(tmp_path / str(adapt))
        )
        score_backbone(slug, p, splits=("val", "test"), model_dir=base, out=tmp_path / str(adapt))
        tables[adapt] = {s: read_table(tmp_path / str(adapt) / f"{s}.json") for s in ("val", "test")}
    assert all(tables[True][s] != tables[False][s] for s in ("val", "test"))
    # val's table is val's own statistics, not those of the split scored before or after it
    scorer = Scorer.load(base, batch_size=tiny_params.score.batch_size, grounding=tiny_params.score.grounding)
    val = split_records(tiny_params, "val")
    root = image_root(tiny_params, "val")
    for split, same in (("test", False), ("val", True)):
        other = split_records(tiny_params, split)
        adapt_to_split(scorer, [r.img_path for r in other], image_root(tiny_params, split), max_images=4096)
        rows = score_resumably(scorer, val, root, tmp_path / f"val-by-{split}", 256, base)
        assert (json.dumps(rows) == json.dumps(tables[True]["val"])) is same
