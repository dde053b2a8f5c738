"""Faults: kill -9 during training, an unreachable tracking store."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

TF = str(Path(sys.executable).with_name("tokenfocus"))


def _cli(args, cwd, **kw):
    return subprocess.run([TF, *args], cwd=cwd, capture_output=True, text=True, timeout=600, **kw)


def test_kill_9_during_training_then_rerun_matches_uninterrupted(project_dir):
    p = yaml.safe_load((project_dir / "params.yaml").read_text())
    p["train"].update(steps=8, checkpoint_every=2, eval_every=4)
    (project_dir / "params.yaml").write_text(yaml.safe_dump(p))
    assert _cli(["split"], project_dir).returncode == 0
    assert _cli(["backbones", "build", "-b", "idefics3_tiny"], project_dir).returncode == 0
    assert _cli(["backbones", "pretrain", "-b", "idefics3_tiny", "--no-track"], project_dir).returncode == 0
    state = project_dir / "models" / "trained" / "idefics3_tiny" / "checkpoint" / "state.json"
    proc = subprocess.Popen(
        [TF, "train", "-b", "idefics3_tiny", "--no-track"],
        cwd=project_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert '"step": 8' not in state.read_text()
    rerun = _cli(["train", "-b", "idefics3_tiny", "--no-track"], project_dir)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from step" in rerun.stderr
    # the same command, never interrupted, in another output folder
    p["train"]["out"] = "models/clean"
    (project_dir / "params.yaml").write_text(yaml.safe_dump(p))
    assert _cli(["train", "-b", "idefics3_tiny", "--no-track"], project_dir).returncode == 0
    a = load_file(project_dir / "models/trained/idefics3_tiny/checkpoint/weights.safetensors")
    b = load_file(project_dir / "models/clean/idefics3_tiny/checkpoint/weights.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    ma = (project_dir / "models/trained/idefics3_tiny/metrics.json").read_text()
    mb = (project_dir / "models/clean/idefics3_tiny/metrics.json").read_text()
    assert ma == mb  # byte for byte: CPU time lives beside the output folder, not in it


@pytest.mark.parametrize("command", [["register"], ["promote"]])
def test_unavailable_tracking_store_is_a_clear_error(project_dir, command):
    blocker = project_dir / "not-a-dir"
    blocker.write_text("a file where the store's folder should be")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{blocker}/mlflow.db"}
    out = _cli(command, project_dir, env=env)
    assert out.returncode == 1
    assert "MLflow tracking store" in out.stderr and "unavailable" in out.stderr
    assert "Traceback" not in out.stderr
