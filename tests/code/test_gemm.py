"""Torch's matrix products and convolutions routed to numpy's OpenBLAS (tokenfocus.gemm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenfocus.gemm import GemmError, fold, openblas_gemm, unfold


def _net():
    torch.manual_seed(0)
    return torch.nn.ModuleDict(
        {
            "stem": torch.nn.Conv2d(3, 8, 7, 2, 3, bias=False),  # the tiny towers' first layer
            "conv": torch.nn.Conv2d(8, 16, 3, 2, 1),
            "tall": torch.nn.Conv2d(16, 16, (3, 1), 1, (1, 0), bias=False),
            # SigLIP's patch embedding: ATen passes padding "valid" as one value, [0]
            "patch": torch.nn.Conv2d(16, 16, 2, 2, padding="valid"),
            "same": torch.nn.Conv2d(16, 16, 3, padding="same"),
            "head": torch.nn.Linear(16, 5),
        }
    )


def _step(net, x):
    """Forward and backward through every routed op: mm, addmm, bmm, convolution (both ways)."""
    net.zero_grad()
    x = x.clone().requires_grad_(True)
    h = net["same"](net["patch"](net["tall"](net["conv"](net["stem"](x))))).mean((2, 3))
    y = net["head"](h) + torch.bmm(h[None], net["head"].weight.t()[None])[0]
    y.pow(2).sum().backward()
    return [y.detach(), x.grad, *(p.grad for p in net.parameters())]


def test_routed_ops_compute_torchs_results_and_torch_comes_back_on_exit():
    net, x = _net(), torch.randn(4, 3, 20, 20)
    before = _step(net, x)
    with openblas_gemm():
        inside = _step(net, x)
    after = _step(net, x)
    for a, b in zip(before, inside, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, inside, strict=True)), "nothing was routed"
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_products_are_numpys_inside():
    a, b, bias = torch.randn(33, 17), torch.randn(17, 9), torch.randn(9)
    with openblas_gemm():
        mm, addmm = a @ b, torch.addmm(bias, a, b)
        scaled = torch.addmm(bias, a, b, beta=0.5, alpha=2.0)
    expected = torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    assert torch.equal(mm, expected)
    assert torch.equal(addmm, expected + bias)
    torch.testing.assert_close(scaled, 2.0 * expected + 0.5 * bias)


def test_a_rerun_inside_gives_the_same_bits():
    net, x = _net(), torch.randn(4, 3, 20, 20)
    with openblas_gemm():
        first = _step(net, x)
        second = _step(net, x)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_unfold_and_fold_match_torchs():
    x = torch.randn(2, 3, 11, 9)
    for kernel, padding, stride in (
        ((7, 7), (3, 3), (2, 2)),
        ((3, 1), (1, 0), (1, 1)),
        ((2, 2), (0, 0), (2, 2)),
    ):
        cols = unfold(x, kernel, padding, stride)
        assert torch.equal(cols, F.unfold(x, kernel, padding=padding, stride=stride))
        back = fold(cols, x.shape, kernel, padding, stride)
        torch.testing.assert_close(back, F.fold(cols, x.shape[2:], kernel, padding=padding, stride=stride))


def test_what_it_cannot_route_is_refused_by_name():
    grouped = torch.nn.Conv2d(4, 4, 3, groups=2)
    with openblas_gemm():
        with pytest.raises(GemmError, match="groups 2"):
            grouped(torch.randn(1, 4, 8, 8))
        with pytest.raises(GemmError, match=r"aten::mm on torch\.bfloat16"):
            torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)
    # outside, torch runs them as ever
    assert grouped(torch.randn(1, 4, 8, 8)).shape == (1, 4, 6, 6)


def test_nested_entry_keeps_the_outer_routing():
    a, b = torch.randn(8, 5), torch.randn(5, 3)
    expected = torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    with openblas_gemm():
        with openblas_gemm():
            pass
        assert torch.equal(a @ b, expected)


def test_openblas_runs_at_the_callers_thread_count_inside():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"}

    with openblas_gemm(threads=1):
        assert blas_threads() == {1}
    with openblas_gemm(threads=2):
        assert blas_threads() == {2}


def test_products_picks_torchs_own_or_openblas_and_refuses_other_names():
    from tokenfocus.gemm import _active, products

    with products("mkl", 1):
        assert not _active
    with products("openblas", 1):
        assert _active
    with pytest.raises(ValueError, match=r"gemm must be one of \['mkl', 'openblas'\], got 'cublas'"):
        products("cublas", 1)


def test_entrants_from_two_threads_share_one_routing_until_the_last_leaves():
    """A Dask worker runs tasks side by side in one process: the routing is the process's."""
    import threading

    from tokenfocus.gemm import _active

    a, b = torch.randn(8, 5), torch.randn(5, 3)
    expected = torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    entered, leave = threading.Event(), threading.Event()

    def other():
        with openblas_gemm(threads=1):
            entered.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    t.start()
    entered.wait(10)
    with openblas_gemm(threads=1):
        assert len(_active) == 1  # one registration, shared
    assert _active, "the first entrant's routing ended when another thread left"
    assert torch.equal(a @ b, expected)
    leave.set()
    t.join(10)
    assert not _active  # the last one out gives torch its kernels back
    torch.testing.assert_close(a @ b, expected)


def test_an_entrant_at_another_thread_count_is_refused_while_routed():
    with openblas_gemm(threads=1):
        with pytest.raises(GemmError, match="entered at 2 thread.*routed at 1"):
            with openblas_gemm(threads=2):
                pass
        # the routing stands for the one inside
        a, b = torch.randn(4, 4), torch.randn(4, 4)
        assert torch.equal(a @ b, torch.from_numpy(np.matmul(a.numpy(), b.numpy())))


@pytest.mark.parametrize(
    ("layer", "computes_in", "routed"),
    [
        (torch.nn.Conv2d(3, 4, 3), "float32", True),
        (torch.nn.Linear(3, 4), "bfloat16", False),  # bf16 autocast over float32 weights
        (torch.nn.Linear(3, 4).to(torch.bfloat16), "float32", False),  # a checkpoint held in bf16
        (torch.nn.Conv3d(3, 4, (2, 3, 3)), "float32", False),  # Qwen2-VL's patch embedding
        (torch.nn.Conv2d(4, 4, 3, groups=4), "float32", False),  # FastViT's depthwise convolutions
        (torch.nn.Conv2d(3, 4, 3, dilation=2), "float32", False),
    ],
    ids=["plain", "autocast", "bf16", "conv3d", "grouped", "dilated"],
)
def test_a_backbone_is_routed_only_where_openblas_can_run_all_of_it(layer, computes_in, routed, caplog):
    from tokenfocus.gemm import _active, backbone_products

    model = torch.nn.Sequential(torch.nn.Identity(), layer)
    with caplog.at_level("INFO", logger="tokenfocus.gemm"):
        with backbone_products("openblas", 1, model, computes_in=computes_in):
            assert bool(_active) is routed
    assert routed or "torch's own products for this backbone" in caplog.text
    with backbone_products("mkl", 1, model, computes_in=computes_in):
        assert not _active


def test_fine_tuning_on_openblas_is_its_own_reproducible_draw(tiny_params, tmp_path):
    import dataclasses

    from safetensors.torch import load_file

    from tokenfocus.gemm import _active
    from tokenfocus.train import Trainer

    slug, weights = "fastvlm_gemma", {}
    for name, gemm in (("mkl", "mkl"), ("openblas", "openblas"), ("again", "openblas")):
        train = dataclasses.replace(tiny_params.train, steps=2, eval_every=2, checkpoint_every=2, gemm=gemm)
        Trainer(slug, dataclasses.replace(tiny_params, train=train), out=tmp_path / name).run()
        assert not _active  # torch's own kernels are back after it
        weights[name] = load_file(tmp_path / name / "checkpoint" / "weights.safetensors")

    def same(a, b):
        return all(torch.equal(weights[a][k], weights[b][k]) for k in weights[a])

    assert same("openblas", "again")  # reruns to the bit
    assert not same("mkl", "openblas")  # the adapter's products went through OpenBLAS
    for k in weights["mkl"]:
        torch.testing.assert_close(weights["openblas"][k], weights["mkl"][k], rtol=1e-3, atol=1e-4)


def test_the_score_stage_scores_on_score_gemm_and_never_resumes_the_other_blas_table(
    tiny_params, tmp_path, monkeypatch
):
    import copy
    import dataclasses
    import json
    from pathlib import Path

    import tokenfocus.images
    from tokenfocus.predictions import read_table, score_backbone

    slug = "fastvlm_gemma"
    base = Path(tiny_params.backbone(slug).source)

    def stage(gemm: str, out: Path) -> list[dict]:
        p = copy.copy(tiny_params)
        p.score = dataclasses.replace(tiny_params.score, gemm=gemm, chunk=4, adapt_norm=False, out=str(out))
        score_backbone(slug, p, splits=("val",), model_dir=base, out=out)
        return read_table(out / "val.json")

    mkl, openblas = stage("mkl", tmp_path / "mkl"), stage("openblas", tmp_path / "openblas")
    assert json.dumps(mkl) != json.dumps(openblas)
    for a, b in zip(mkl, openblas, strict=True):
        assert b["score"] == pytest.approx(a["score"], abs=1e-4)
        assert b["elements"] == pytest.approx(a["elements"], abs=1e-4)
    # an MKL run killed after its first chunk leaves a partial table that OpenBLAS does not take up
    load, calls = tokenfocus.images.load_images, []

    def killed_after_one_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return load(*args, **kwargs)

    monkeypatch.setattr(tokenfocus.images, "load_images", killed_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        stage("mkl", tmp_path / "cut")
    assert (tmp_path / "cut" / "val.partial.jsonl").exists()
    monkeypatch.setattr(tokenfocus.images, "load_images", load)
    assert json.dumps(stage("openblas", tmp_path / "cut")) == json.dumps(openblas)


@pytest.mark.parametrize("block", ["train", "score"])
def test_an_unknown_gemm_in_params_is_refused_naming_the_key(block, tmp_path):
    import yaml

    from tokenfocus.config import ConfigError, load_params

    p = yaml.safe_load(open("params.yaml"))
    p[block]["gemm"] = "cublas"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(
        ConfigError, match=rf"{block}.gemm must be one of \['mkl', 'openblas'\], got 'cublas'"
    ):
        load_params(tmp_path / "params.yaml")


def test_a_convolutions_backward_takes_the_columns_its_forward_kept(monkeypatch):
    """The weight gradient needs the forward's im2col columns again: a forward that will be backed
    keeps them, its backward takes them out (the same bits as copying them again), and nothing is
    kept where no backward will come, past the bound, or after the routing ends."""
    from tokenfocus import gemm

    net, x = _net(), torch.randn(4, 3, 20, 20)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.values())
    with openblas_gemm():
        net.zero_grad()
        h = net["same"](net["patch"](net["tall"](net["conv"](net["stem"](x.clone().requires_grad_(True))))))
        assert len(gemm._columns) == convs
        h.pow(2).sum().backward()
        assert not gemm._columns  # every backward found its forward's columns
        kept = _step(net, x)
        with torch.no_grad():
            net["stem"](x)
        net["stem"].weight.requires_grad_(False)
        net["stem"](x)  # frozen, and an input that needs no gradient: no backward will come
        assert not gemm._columns
        net["stem"].weight.requires_grad_(True)
        for _ in range(gemm.KEPT_COLUMNS + 5):  # forwards never backed stay bounded
            net["stem"](x.clone())
        assert len(gemm._columns) == gemm.KEPT_COLUMNS
    assert not gemm._columns
    monkeypatch.setattr(gemm, "KEPT_COLUMNS", 0)  # every backward copies the columns again
    with openblas_gemm():
        copied = _step(net, x)
    assert all(torch.equal(a, b) for a, b in zip(kept, copied, strict=True))
