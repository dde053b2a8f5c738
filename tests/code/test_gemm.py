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
            "head": torch.nn.Linear(16, 5),
        }
    )


def _step(net, x):
    """Forward and backward through every routed op: mm, addmm, bmm, convolution (both ways)."""
    net.zero_grad()
    x = x.clone().requires_grad_(True)
    h = net["tall"](net["conv"](net["stem"](x))).mean((2, 3))
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
    with pytest.raises(ValueError, match="gemm 'cublas' is not one of"):
        products("cublas", 1)
