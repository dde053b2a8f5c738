"""The fine-tuning optimizer's steps are the same bits whichever code MKL runs for this CPU.

MKL's vendor-neutral branch (``MKL_CBWR=COMPATIBLE``, what the project pins) takes a vector's
square root from ``rsqrtps``, whose estimate Intel and AMD CPUs compute differently; its AVX2 branch
(on any vendor where the vendor shim claims Intel) takes the exact IEEE root. Plain AdamW's
``exp_avg_sq.sqrt()`` goes through MKL, so its bits follow the branch, and so they followed the
CPU's maker: that is the control here. :func:`tokenfocus.train.trainer.adamw` must not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tokenfocus.env import CPU_KERNEL_ENV
from tokenfocus.golden import mkl_vendor_shim

STEPS = """
import hashlib, json, torch
from tokenfocus.train.trainer import adamw

def run(make):
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(257, 129, generator=g)), torch.nn.Parameter(torch.randn(999, generator=g))]
    opt = make([{"params": ps}], lr=1e-3, weight_decay=0.01)
    for _ in range(10):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
        opt.step()
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in ps)).hexdigest()

print(json.dumps({"plain": run(torch.optim.AdamW), "project": run(adamw)}))
"""


def _steps(env_extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CPU_KERNEL_ENV}
    env.update({**CPU_KERNEL_ENV, **env_extra})
    out = subprocess.run([sys.executable, "-c", STEPS], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_optimizer_steps_do_not_follow_mkls_code_branch(tmp_path):
    shim = mkl_vendor_shim(True, tmp_path)  # claims Intel, so MKL takes its AVX2 branch on any vendor
    if shim is None:
        pytest.skip("no C compiler to build the vendor shim with")
    neutral = _steps({"MKL_CBWR": "COMPATIBLE,STRICT"})
    avx2 = _steps({"MKL_CBWR": "AVX2,STRICT", "LD_PRELOAD": str(shim)})
    if neutral["plain"] == avx2["plain"]:
        pytest.skip("MKL's two branches take the same root in this torch build: nothing to tell apart")
    assert neutral["project"] == avx2["project"], "the fine-tuning optimizer's bits depend on MKL's branch"
