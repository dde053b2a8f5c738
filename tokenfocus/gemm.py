"""Torch's matrix products and convolutions on numpy's OpenBLAS, a fast BLAS that is portable.

Why: under the pinned kernels (:mod:`tokenfocus.env`) torch's BLAS is MKL's vendor-neutral
COMPATIBLE branch, SSE2 code: 13-20 GFLOP/s a core on an Emerald Rapids host, where numpy's
OpenBLAS on its pinned Haswell kernels (AVX2 and FMA, the same code on every x86-64 CPU of the last
decade, Intel or AMD) reaches 40-90 (measured, docs/pretraining.md). Matrix products are most of a
tiny base's pre-training step, so :func:`openblas_gemm` routes them there for as long as it is
entered: ``aten::mm``, ``addmm`` and ``bmm`` go to ``numpy.matmul``, and a 2-D convolution (forward
and backward) to a strided im2col plus ``numpy.matmul``, one GEMM per image as torch's own im2col
path does. Every other op runs as before.

What it changes: the bits. A product summed in OpenBLAS's order differs in the last places from
MKL's (about 1e-7 relative), so a run inside the context is another draw than a run outside it,
reproduced by every host that runs it inside at the same thread count. OpenBLAS's thread count
moves bits as torch's does (measured: a 512 x 1152 x 128 product at one thread and at two), so
the context fixes it to the caller's torch threads.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from tokenfocus.config.model import check_gemm

log = logging.getLogger(__name__)

#: The dtypes numpy multiplies; any other (half, bfloat16, integers) is refused by name.
DTYPES = (torch.float32, torch.float64)


class GemmError(RuntimeError):
    """An op inside :func:`openblas_gemm` that it cannot route: it names the op and the reason."""


def _arrays(op: str, *tensors: torch.Tensor) -> list[np.ndarray]:
    for t in tensors:
        if t.dtype not in DTYPES:
            raise GemmError(
                f"openblas_gemm: aten::{op} on {t.dtype}: numpy multiplies only float32 and float64; "
                "run this step outside the context"
            )
    return [t.detach().numpy() for t in tensors]


def _matmul(op: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    x, y = _arrays(op, a, b)
    return torch.from_numpy(np.matmul(x, y))


def _mm(a, b):
    return _matmul("mm", a, b)


def _bmm(a, b):
    return _matmul("bmm", a, b)


def _addmm(bias, a, b, *, beta=1, alpha=1):
    out = _matmul("addmm", a, b)
    if alpha != 1:
        out.mul_(alpha)
    if beta != 0:  # beta 0 ignores bias, NaN included, as torch's addmm does
        out.add_(bias if beta == 1 else bias * beta)
    return out


def _check_conv(x, w, dilation, transposed, groups) -> None:
    if x.dim() != 4 or transposed or groups != 1 or any(d != 1 for d in dilation):
        raise GemmError(
            f"openblas_gemm: aten::convolution of a {x.dim()}-d input, weight {tuple(w.shape)}, "
            f"groups {groups}, dilation {list(dilation)}, transposed {transposed}: only plain 2-d "
            "convolutions are routed; run this model outside the context"
        )


def _pair(values) -> tuple[int, int]:
    """A convolution's stride, padding or dilation as two sides: ATen may pass one value for both
    (a ``padding="valid"`` convolution, SigLIP's patch embedding, arrives with ``[0]``)."""
    values = tuple(values)
    return values * 2 if len(values) == 1 else values


def _out_size(size: int, k: int, p: int, s: int) -> int:
    return (size + 2 * p - k) // s + 1


def unfold(x: torch.Tensor, kernel, padding, stride) -> torch.Tensor:
    """im2col: (n, c, h, w) -> (n, c * kh * kw, oh * ow), as ``F.unfold`` gives it, by a strided
    view and one copy (3x faster than ATen's im2col loop on the tower's first layer). The copy is
    numpy's: on the tower's 7 x 7, stride-2 first layer it takes half of torch's (measured, 2.6 ms
    against 4.5 a batch of 32), and the columns are the same values."""
    n, c, h, w = x.shape
    (kh, kw), (ph, pw), (sh, sw) = kernel, padding, stride
    xp = (F.pad(x, (pw, pw, ph, ph)) if ph or pw else x).detach().numpy()
    oh, ow = _out_size(h, kh, ph, sh), _out_size(w, kw, pw, sw)
    bn, bc, bh, bw = xp.strides
    view = np.lib.stride_tricks.as_strided(xp, (n, c, kh, kw, oh, ow), (bn, bc, bh, bw, bh * sh, bw * sw))
    return torch.from_numpy(view.reshape(n, c * kh * kw, oh * ow))


#: im2col columns a convolution's forward made, kept for its backward's weight gradient, which
#: needs the same columns (an eighth of a tower step went to copying them again, docs/pretraining.md).
#: Keyed by the input's memory, layout and version and the geometry; each entry holds the input
#: itself, so that no other tensor can take its address while the entry lives. Only forwards whose
#: backward will ask (grad on, and a weight or the input requiring it) keep theirs; the backward
#: takes its entry out, and the oldest go past :data:`KEPT_COLUMNS` (a forward never backed).
_columns: collections.OrderedDict = collections.OrderedDict()
_columns_lock = threading.Lock()
KEPT_COLUMNS = 64


def _columns_key(x: torch.Tensor, geometry: tuple) -> tuple:
    return (x.data_ptr(), x.dtype, tuple(x.shape), x.stride(), x._version, geometry)


def _keep_columns(x: torch.Tensor, w: torch.Tensor, geometry: tuple, cols: torch.Tensor) -> None:
    if not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)):
        return
    with _columns_lock:
        _columns[_columns_key(x, geometry)] = (x, cols)
        while len(_columns) > KEPT_COLUMNS:
            _columns.popitem(last=False)


def _kept_columns(x: torch.Tensor, geometry: tuple) -> torch.Tensor | None:
    with _columns_lock:
        entry = _columns.pop(_columns_key(x, geometry), None)
    return None if entry is None else entry[1]


def fold(cols: torch.Tensor, shape, kernel, padding, stride) -> torch.Tensor:
    """col2im, :func:`unfold`'s adjoint: each kernel offset's columns added where they came from,
    offsets in a fixed order."""
    n, c, h, w = shape
    (kh, kw), (ph, pw), (sh, sw) = kernel, padding, stride
    oh, ow = _out_size(h, kh, ph, sh), _out_size(w, kw, pw, sw)
    out = cols.new_zeros(n, c, h + 2 * ph, w + 2 * pw)
    g = cols.reshape(n, c, kh, kw, oh, ow)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] += g[:, :, i, j]
    return out[:, :, ph : ph + h, pw : pw + w]


def _convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    stride, padding = _pair(stride), _pair(padding)
    _check_conv(x, w, dilation, transposed, groups)
    n, o = x.shape[0], w.shape[0]
    kernel = tuple(w.shape[2:])
    cols = unfold(x, kernel, padding, stride)
    _keep_columns(x, w, (kernel, padding, stride), cols)
    weights, columns = _arrays("convolution", w.reshape(o, -1), cols)
    out = torch.from_numpy(np.matmul(weights, columns))  # (n, o, L): one GEMM per image
    oh = _out_size(x.shape[2], kernel[0], padding[0], stride[0])
    out = out.reshape(n, o, oh, -1)
    return out if bias is None else out.add_(bias.reshape(1, -1, 1, 1))


def _convolution_backward(
    grad, x, w, bias_sizes, stride, padding, dilation, transposed, output_padding, groups, mask
):
    stride, padding = _pair(stride), _pair(padding)
    _check_conv(x, w, dilation, transposed, groups)
    n, o = x.shape[0], w.shape[0]
    kernel = tuple(w.shape[2:])
    (g,) = _arrays("convolution_backward", grad.reshape(n, o, -1))
    grad_x = grad_w = grad_b = None
    if mask[1]:
        cols = _kept_columns(x, (kernel, padding, stride))
        if cols is None:  # a forward outside the routing, or one evicted past the bound
            cols = unfold(x, kernel, padding, stride)
        (cols,) = _arrays("convolution_backward", cols)
        # per image, then summed over the batch in order
        grad_w = torch.from_numpy(np.matmul(g, cols.transpose(0, 2, 1)).sum(0)).reshape(w.shape)
    if mask[0]:
        (weights,) = _arrays("convolution_backward", w.reshape(o, -1))
        grad_x = fold(torch.from_numpy(np.matmul(weights.T, g)), x.shape, kernel, padding, stride)
    if mask[2]:
        grad_b = grad.sum((0, 2, 3))
    return grad_x, grad_w, grad_b


_KERNELS = {
    "mm": _mm,
    "addmm": _addmm,
    "bmm": _bmm,
    "convolution": _convolution,
    "convolution_backward": _convolution_backward,
}
_active: list[torch.library.Library] = []  # the one registration while entered, else empty
_entered = {"users": 0, "threads": 0, "limits": None}
_lock = threading.Lock()


@contextlib.contextmanager
def openblas_gemm(threads: int = 1) -> Iterator[None]:
    """Route torch's CPU matrix products and 2-D convolutions to numpy's OpenBLAS while entered.

    The CPU kernels of ``aten::mm``, ``addmm``, ``bmm``, ``convolution`` and
    ``convolution_backward`` are overridden for the whole process and restored when the last
    entrant leaves; CUDA and every other op are untouched. Entering it again, inside or from
    another thread of the process (a Dask worker's tasks), shares the one routing.

    Args:
        threads: OpenBLAS's threads while entered: the caller's torch threads (another count,
            other bits).

    Raises:
        GemmError: on entry at another thread count than the process is already routed at (the
            bits would depend on who came first); inside, for a product of a dtype numpy lacks or
            a convolution that is not plain 2-d (grouped, dilated, transposed), naming the op.
    """
    from threadpoolctl import threadpool_limits

    with _lock:
        if _entered["users"] and _entered["threads"] != threads:
            raise GemmError(
                f"openblas_gemm: entered at {threads} thread(s) while this process is routed at "
                f"{_entered['threads']}: OpenBLAS's thread count moves the bits, so every entrant "
                "must ask the same"
            )
        if not _entered["users"]:
            lib = torch.library.Library("aten", "IMPL")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "overriding a previously registered kernel": the point
                for name, kernel in _KERNELS.items():
                    lib.impl(name, kernel, "CPU")
            _active.append(lib)
            _entered["threads"] = threads
            _entered["limits"] = threadpool_limits(limits=threads, user_api="blas")
        _entered["users"] += 1
    try:
        yield
    finally:
        with _lock:
            _entered["users"] -= 1
            if not _entered["users"]:
                _entered["limits"].restore_original_limits()
                with _columns_lock:
                    _columns.clear()
                _active.pop()._destroy()  # torch's own kernels back


def products(gemm: str, threads: int) -> contextlib.AbstractContextManager:
    """The context a run's products go through: ``mkl`` torch's own, ``openblas``
    :func:`openblas_gemm` at ``threads``."""
    check_gemm("gemm", gemm)
    return openblas_gemm(threads) if gemm == "openblas" else contextlib.nullcontext()


def unroutable(model: torch.nn.Module) -> str | None:
    """Why :func:`openblas_gemm` cannot run ``model``'s products, or None where it can: a
    parameter that is not float32 on the CPU, or a convolution that is not plain 2-d (a Qwen2-VL's
    3-d patch embedding, a FastViT's grouped convolutions), named."""
    for name, p in model.named_parameters():
        if p.dtype not in DTYPES or p.device.type != "cpu":
            return f"{name} is {p.dtype} on {p.device}"
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd) and (
            not isinstance(m, torch.nn.Conv2d) or m.groups != 1 or any(d != 1 for d in m.dilation)
        ):
            return f"{name} is a {type(m).__name__} (groups {m.groups}, dilation {list(m.dilation)})"
    return None


def backbone_products(
    gemm: str, threads: int, model: torch.nn.Module, *, computes_in: str = "float32"
) -> contextlib.AbstractContextManager:
    """The context a backbone's fine-tuning or scoring runs in (``train.gemm``, ``score.gemm``).

    OpenBLAS multiplies float32 on the CPU, through plain 2-d convolutions, so a backbone held in
    another dtype (a real checkpoint in bfloat16), trained under bf16 autocast, placed on an
    accelerator, or with another kind of convolution keeps torch's own products, and the log says
    why: on an accelerator the bits are the accelerator's anyway.

    Args:
        gemm: one of :data:`tokenfocus.config.model.GEMMS`.
        threads: the stage's torch threads.
        model: the loaded model, on its device.
        computes_in: the dtype its forward computes in (the backbone's ``dtype``: under autocast,
            not its parameters').
    """
    context = products(gemm, threads)
    if gemm != "openblas":
        return context
    why = f"it computes in {computes_in}" if computes_in != "float32" else unroutable(model)
    if why:
        log.info("gemm openblas: torch's own products for this backbone: %s", why)
        return contextlib.nullcontext()
    return context
