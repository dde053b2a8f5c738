"""Same bits on every x86-64 machine: the golden pass of a shipped base, through the CLI.

The pass runs in a fresh ``tokenfocus golden`` process whose environment holds none of the
kernel variables, so it also proves that the entry point pins them itself (as every DVC stage,
flow task and script does) before torch loads. A machine whose kernels compute other bits fails
here, before ``make run`` would rewrite docs/results.md and dvc.lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenfocus.env import CPU_KERNEL_ENV, NATIVE_SWITCH
from tokenfocus.golden import host_is_intel, mkl_vendor_shim

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((Path(__file__).with_name("golden_bits.json")).read_text())


def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _golden(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CPU_KERNEL_ENV and k != NATIVE_SWITCH}
    env.update(env_extra)
    out = subprocess.run(
        [str(Path(sys.executable).with_name("tokenfocus")), "golden"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


needs_avx2_cpu = pytest.mark.skipif(
    not _has_avx2(),
    reason="the golden bits are those of AVX2 kernels: this CPU has no AVX2 (ARM, or older x86)",
)


@needs_avx2_cpu
def test_golden_pass_has_the_committed_bits():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU computes other bits (same code, tolerances instead): see the README")
    assert (ROOT / "models/base/fastvlm_gemma").is_dir(), "the shipped base is missing: run `make bases`"
    got = _golden({})
    assert got["capability"] == GOLDEN["capability"], "the CLI did not pin the kernels before torch loaded"
    assert got["logits"] == GOLDEN["logits"], "the logits' bits drifted on this machine"
    assert got["grads"] == GOLDEN["grads"], "the gradients' bits drifted on this machine"


@pytest.mark.slow  # ~22 s, three golden passes; make test keeps the committed bits' check above
@needs_avx2_cpu
def test_golden_bits_are_those_of_the_other_cpu_vendor_too(tmp_path):
    """MKL picks its code by the CPU's vendor: a shim answering its vendor check the other way
    (Intel on an AMD host, not Intel on an Intel one) must leave the pinned bits unchanged."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU computes other bits (same code, tolerances instead): see the README")
    shim = mkl_vendor_shim(not host_is_intel(), tmp_path)
    if shim is None:
        pytest.skip("no C compiler to build the vendor shim with")
    # Control: MKL's AVX2 branch is vendor-dependent, so there the shim must change the bits.
    vendor_bound = {"MKL_CBWR": "AVX2,STRICT", "TOKENFOCUS_ONEDNN": "on"}
    host = _golden(vendor_bound)
    other = _golden({**vendor_bound, "LD_PRELOAD": str(shim)})
    if host["logits"] == other["logits"]:
        pytest.skip("this torch build does not let the shim reach MKL's vendor check")
    got = _golden({"LD_PRELOAD": str(shim)})
    assert got["logits"] == GOLDEN["logits"], "the pinned logits depend on the CPU's vendor"
    assert got["grads"] == GOLDEN["grads"], "the pinned gradients depend on the CPU's vendor"


@needs_avx2_cpu
def test_operator_values_win_over_the_pinned_kernels():
    got = _golden({NATIVE_SWITCH: "native", "ATEN_CPU_CAPABILITY": "default"})
    assert got["capability"] == "DEFAULT"
    assert got["logits"] != GOLDEN["logits"]  # the pass can see a change of kernels at all
