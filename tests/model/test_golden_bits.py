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


def _golden(env_extra: dict[str, str], *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CPU_KERNEL_ENV and k != NATIVE_SWITCH}
    env.update(env_extra)
    out = subprocess.run(
        [str(Path(sys.executable).with_name("tokenfocus")), "golden", *args],
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
    from tokenfocus.config import load_params

    got = _golden({})  # on train.gemm's products
    assert got["capability"] == GOLDEN["capability"], "the CLI did not pin the kernels before torch loaded"
    trains_on = load_params(ROOT / "params.yaml").train.gemm
    assert got["logits"] == GOLDEN[trains_on]["logits"], "the logits' bits drifted on this machine"
    assert got["grads"] == GOLDEN[trains_on]["grads"], "the gradients' bits drifted on this machine"
    # the other products too: torch's own are the served model's, OpenBLAS's scoring's
    other = next(g for g in ("mkl", "openblas") if g != trains_on)
    got = _golden({}, "--gemm", other)
    assert (got["logits"], got["grads"]) == (GOLDEN[other]["logits"], GOLDEN[other]["grads"]), other


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
    host = _golden(vendor_bound, "--gemm", "mkl")
    other = _golden({**vendor_bound, "LD_PRELOAD": str(shim)}, "--gemm", "mkl")
    if host["logits"] == other["logits"]:
        pytest.skip("this torch build does not let the shim reach MKL's vendor check")
    got = _golden({"LD_PRELOAD": str(shim)}, "--gemm", "mkl")
    assert got["logits"] == GOLDEN["mkl"]["logits"], "the pinned logits depend on the CPU's vendor"
    assert got["grads"] == GOLDEN["mkl"]["grads"], "the pinned gradients depend on the CPU's vendor"
    # and the pass on OpenBLAS's products holds under the shim too
    got = _golden({"LD_PRELOAD": str(shim)}, "--gemm", "openblas")
    assert (got["logits"], got["grads"]) == (GOLDEN["openblas"]["logits"], GOLDEN["openblas"]["grads"])


@needs_avx2_cpu
def test_operator_values_win_over_the_pinned_kernels():
    got = _golden({NATIVE_SWITCH: "native", "ATEN_CPU_CAPABILITY": "default"})
    assert got["capability"] == "DEFAULT"
    assert got["logits"] != GOLDEN["mkl"]["logits"]  # the pass can see a change of kernels at all
    assert got["logits"] != GOLDEN["openblas"]["logits"]


@pytest.mark.slow  # ~40 s: a golden pass and two steps in a fresh process, two steps in this one
@needs_avx2_cpu
def test_golden_steps_hash_the_weights_a_training_run_holds(tmp_path):
    """``tokenfocus golden --steps`` hashes the weights after each real fine-tuning step: the
    weights a training run holds after those steps, so two hosts' trajectories show where their
    fine-tuned folders part (docs/clean-runs.md)."""
    import hashlib

    from tokenfocus.config import load_params
    from tokenfocus.golden import GOLDEN_SLUG
    from tokenfocus.train import Trainer

    if not (ROOT / "work" / "splits.json").is_file():
        pytest.skip("the steps read the train split: run `make run` (or `dvc repro split`) first")
    got = _golden({}, "--steps", "2")
    assert len(got["weights"]) == 2 and got["weights"][0] != got["weights"][1]
    assert "0" in got["loss"]  # step 0 is a logged step
    trainer = Trainer(GOLDEN_SLUG, load_params(ROOT / "params.yaml"), out=tmp_path / "run")
    trainer.run(stop_after=2)
    h = hashlib.sha256()
    for p in trainer.trainable:
        h.update(p.detach().contiguous().float().numpy().tobytes())
    assert h.hexdigest()[:12] == got["weights"][1]


def test_first_parting_step_names_the_first_step_whose_weights_differ():
    from tokenfocus.golden import first_parting_step

    mine = ["a", "b", "c", "d"]
    assert first_parting_step(mine, {"weights": ["a", "b", "c", "d", "e"]}) is None
    assert first_parting_step(mine, {"weights": ["a", "b", "x", "y"]}) == 2
    assert first_parting_step(mine, {"weights": ["z"]}) == 0
