"""`tokenfocus repro` under real `dvc`, on a toy pipeline of the project's shape: each backbone's
train and score stages side by side, the shared stages before them, the gathering ones after."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tokenfocus.config import load_params
from tokenfocus.repro import reproduce, side_by_side_jobs

DVC = str(Path(sys.executable).with_name("dvc"))

# train@<me>: says it started, then waits (up to a minute) for the other backbone's training to
# start too. Run one after the other, the first would wait in vain and write "alone".
MEET = """
import sys, time
from pathlib import Path
me, other = sys.argv[1], sys.argv[2]
Path(f"started_{me}").touch()
if Path(f"fail_{me}").exists():
    sys.exit(f"{me} fails on purpose")
deadline = time.monotonic() + 60
while not Path(f"started_{other}").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
Path(f"train_{me}.txt").write_text("together" if Path(f"started_{other}").exists() else "alone")
"""

PIPELINE = {
    "stages": {
        "split": {"cmd": "echo s > split.txt", "outs": ["split.txt"]},
        "pretrain": {
            "foreach": ["a", "b"],
            "do": {"cmd": "echo p > pre_${item}.txt", "outs": ["pre_${item}.txt"]},
        },
        "train": {
            "foreach": {"a": "b", "b": "a"},
            "do": {
                "cmd": f"{sys.executable} meet.py ${{key}} ${{item}}",
                "deps": ["meet.py", "split.txt", "pre_${key}.txt"],
                "outs": ["train_${key}.txt"],
            },
        },
        "score": {
            "foreach": ["a", "b"],
            "do": {
                "cmd": "cp train_${item}.txt score_${item}.txt",
                "deps": ["train_${item}.txt"],
                "outs": ["score_${item}.txt"],
            },
        },
        "stack": {
            "cmd": "cat score_a.txt score_b.txt > stack.txt",
            "deps": ["score_a.txt", "score_b.txt"],
            "outs": ["stack.txt"],
        },
    }
}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A git + DVC repo holding the toy pipeline, as the working directory; params with two
    backbones, a and b, at one thread."""
    (tmp_path / "meet.py").write_text(MEET)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    p = load_params(ROOT / "params.yaml")
    bb = next(iter(p.backbones.values()))
    return dataclasses.replace(
        p,
        backbones={"a": bb, "b": bb},
        train=dataclasses.replace(p.train, threads=1),
        score=dataclasses.replace(p.score, threads=1),
    )


def _status() -> str:
    return subprocess.run([DVC, "status"], capture_output=True, text=True, check=True).stdout


def test_the_backbones_stages_run_side_by_side_and_dvc_records_them_all(toy, tmp_path, capsys):
    timing = tmp_path / "eval" / "timing.json"
    assert reproduce(toy, jobs=2, timing=timing) == 0
    # each training saw the other start: they ran at the same time
    assert Path("train_a.txt").read_text() == Path("train_b.txt").read_text() == "together"
    assert Path("stack.txt").read_text() == "togethertogether"
    # dvc.lock holds every stage, as one `dvc repro` would have left it
    locked = yaml.safe_load(Path("dvc.lock").read_text())["stages"]
    assert set(locked) == {
        "split",
        "pretrain@a",
        "pretrain@b",
        "train@a",
        "train@b",
        "score@a",
        "score@b",
        "stack",
    }
    assert "up to date" in _status()
    rec = json.loads(timing.read_text())
    lanes = {s["stage"]: s["lane"] for s in rec["stages"]}
    assert len(lanes) == len(rec["stages"]) == 8  # each stage timed once
    assert lanes["split"] == lanes["pretrain@b"] == "shared" and lanes["stack"] == "gather"
    assert lanes["train@a"] == lanes["score@a"] == "a" and lanes["train@b"] == lanes["score@b"] == "b"
    assert rec["jobs"] == 2 and rec["total_s"] > 0
    out = capsys.readouterr().out
    assert "[a] Running stage 'train@a'" in out and "[b] Running stage 'score@b'" in out
    # a second run finds everything up to date and runs nothing
    assert reproduce(toy, jobs=2, timing=None) == 0
    assert "Running stage" not in capsys.readouterr().out


def test_a_failed_backbone_stops_the_gathering_and_keeps_the_other_backbones_work(toy, capsys):
    Path("fail_b").touch()
    assert reproduce(toy, jobs=2, timing=None) != 0
    assert "failed in b" in capsys.readouterr().err
    assert not Path("stack.txt").exists()  # nothing gathered over a failed backbone
    status = _status()
    assert "score@a" not in status and "train@a" not in status  # a's stages recorded
    assert "train@b" in status
    # fixed, the next run does b's stages and the gathering, not a's again
    Path("fail_b").unlink()
    assert reproduce(toy, jobs=2, timing=None) == 0
    ran = {line.split("'")[1] for line in capsys.readouterr().out.splitlines() if "Running stage" in line}
    assert ran == {"train@b", "score@b", "stack"}


def test_as_many_backbones_at_a_time_as_the_cores_hold(toy):
    def jobs(params=toy, backbones=2, cores=2, accelerated=False):
        return side_by_side_jobs(params, backbones, cores=cores, accelerated=accelerated)

    assert jobs() == 2 and jobs(cores=1) == 1
    assert jobs(backbones=3) == 2
    assert jobs(cores=16) == 2  # never more than one per backbone
    two = dataclasses.replace(toy, train=dataclasses.replace(toy.train, threads=2))
    assert jobs(two) == 1  # two threads each: one at a time
    ranks = dict(toy.backbones, b=dataclasses.replace(toy.backbones["b"], nproc=2))
    assert jobs(dataclasses.replace(toy, backbones=ranks)) == 1  # a backbone's two ranks fill both cores
    assert jobs(cores=16, accelerated=True) == 1  # one GPU's memory is not shared between fine-tunings
    import torch

    # resolved from the backbones' devices (auto): CUDA where there is one
    assert jobs(accelerated=None) == (1 if torch.cuda.is_available() else 2)
