"""Data-parallel fine-tuning and scoring of one backbone under torchrun (gloo, CPU, 2 ranks).

Two ranks with half the batch each must reach the weights one process reaches with the whole
batch, for a full (ViT tower) and a LoRA (the default FastVLM Gemma) family; a rank killed mid-run
must cost only the steps since the last checkpoint; and sharded scoring must give one process's
table. All through the real CLI, which relaunches itself as torchrun ranks (`backbones.<slug>.nproc`).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tokenfocus.train import Trainer

STEPS = 20


def _params(tiny_params, tmp_path: Path, slug: str, *, nproc: int, out: str):
    """Params for ``slug`` alone: 20 steps of batch 4, lighting augmentation on (its draws must
    follow a row's place in the global batch, not its rank)."""
    p = dataclasses.replace(
        tiny_params,
        train=dataclasses.replace(
            tiny_params.train,
            steps=STEPS,
            batch_size=4,
            eval_every=STEPS,
            checkpoint_every=5,
            threads=1,
            augment_lighting=0.2,
            out=str(tmp_path / out),
        ),
        score=dataclasses.replace(tiny_params.score, out=str(tmp_path / out / "scores"), threads=1),
        backbones={slug: dataclasses.replace(tiny_params.backbone(slug), nproc=nproc)},
    )
    path = tmp_path / f"params-{out}.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(p), sort_keys=False))
    return p, path


def _cli(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tokenfocus", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        **kw,
    )


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "checkpoint" / "weights.safetensors")


def _close(a: dict, b: dict, tol: float = 2.5e-5) -> float:
    # Two ranks sum each half of the batch's gradients, then all-reduce: another summation order,
    # which Adam turns into weight differences of ~1e-5 after 20 steps (1.03e-5 measured for the
    # LoRA Gemma under MKL's vendor-neutral kernels). A rank that skipped the all-reduce would
    # learn from half the batch, with differences of the order of the update itself (lr 2e-4).
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= tol, worst
    return worst


@pytest.mark.parametrize("slug", ["idefics3_tiny", "fastvlm_gemma"])  # full, LoRA
def test_two_ranks_reach_the_weights_of_one_process(tiny_params, tmp_path, slug):
    one, _ = _params(tiny_params, tmp_path, slug, nproc=1, out="one")
    Trainer(slug, one).run()
    _, path = _params(tiny_params, tmp_path, slug, nproc=2, out="two")
    run = _cli(["train", "-b", slug, "--params", str(path), "--no-track"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout[run.stdout.index("{") :])  # rank 0 alone prints it
    assert summary["ranks"] == 2 and summary["steps"] == STEPS
    _close(_weights(tmp_path / "one" / slug), _weights(tmp_path / "two" / slug))


def test_a_killed_rank_costs_only_the_steps_since_the_checkpoint(tiny_params, tmp_path):
    import psutil

    slug = "idefics3_tiny"
    one, _ = _params(tiny_params, tmp_path, slug, nproc=1, out="one")
    Trainer(slug, one).run()
    _, path = _params(tiny_params, tmp_path, slug, nproc=2, out="two")
    state = tmp_path / "two" / slug / "checkpoint" / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenfocus", "train", "-b", slug, "--params", str(path), "--no-track"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before a rank could be killed"
    rank1 = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.environ().get("RANK") == "1"]
    assert len(rank1) == 1
    rank1[0].kill()
    assert proc.wait(timeout=300) != 0  # torchrun takes the other rank down and reports it
    assert f'"step": {STEPS}' not in state.read_text()
    rerun = _cli(["train", "-b", slug, "--params", str(path), "--no-track"], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from step" in rerun.stderr
    _close(_weights(tmp_path / "one" / slug), _weights(tmp_path / "two" / slug))


def test_sharded_scoring_equals_one_process(tiny_params, tmp_path):
    slug = "fastvlm_gemma"
    one, path1 = _params(tiny_params, tmp_path, slug, nproc=1, out="one")
    Trainer(slug, one).run()
    _, path2 = _params(tiny_params, tmp_path, slug, nproc=2, out="two")
    # both score the model trained in one process
    p2 = yaml.safe_load(path2.read_text())
    p2["train"]["out"] = str(tmp_path / "one")
    path2.write_text(yaml.safe_dump(p2, sort_keys=False))
    for path in (path1, path2):
        run = _cli(["score", "-b", slug, "--params", str(path), "--no-track", "--split", "test"], tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "scores" / slug / "test.json").read_text())
    b = json.loads((tmp_path / "two" / "scores" / slug / "test.json").read_text())
    assert [r["img_path"] for r in a] == [r["img_path"] for r in b] and len(a) > 4
    for x, y in zip(a, b, strict=True):
        assert abs(x["score"] - y["score"]) <= 1e-5
        assert x["elements"].keys() == y["elements"].keys()
        assert all(abs(x["elements"][k] - y["elements"][k]) <= 1e-5 for k in x["elements"])
    assert not list((tmp_path / "two" / "scores" / slug).rglob("*.rank*.json"))  # merged, cleaned up


def test_a_data_parallel_backbone_asks_a_dask_worker_for_its_gpus(tiny_params):
    import dask

    from flows.retrain import placement

    bb = dataclasses.replace(tiny_params.backbone("fastvlm_gemma"), nproc=8)
    own = dataclasses.replace(tiny_params.flows, runner="dask-address", dask_address="tcp://127.0.0.1:8786")
    p = dataclasses.replace(tiny_params, backbones={"x": bb}, flows=own)
    with placement(p, "x"):
        assert dask.get_annotations() == {"resources": {"GPU": 8}}
    with placement(dataclasses.replace(p, flows=tiny_params.flows), "x"):  # a local cluster: no GPUs to ask
        assert dask.get_annotations() == {}
