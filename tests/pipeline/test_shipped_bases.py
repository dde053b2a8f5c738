"""The pre-trained tiny bases ship in the DVC remote inside the repository (dvc-store/).

dvc.lock names them; the remote must hold exactly those (a fresh clone pulls them and finds
pretrain@* up to date), and stay small enough for git.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT
from tokenfocus.config import load_params

STORE = ROOT / "dvc-store"
DVC = str(Path(sys.executable).with_name("dvc"))
SHIPPED_STAGES = ("build", "pretrain")


def _blob(md5: str) -> Path:
    return STORE / "files" / "md5" / md5[:2] / md5[2:]


def _locked_outs(root: Path = ROOT) -> dict[str, str]:
    """stage -> md5 of its one folder output, for every build@ and pretrain@ stage in dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    out = {}
    for name, stage in lock.items():
        if name.split("@")[0] in SHIPPED_STAGES:
            [o] = [o for o in stage["outs"] if o["md5"].endswith(".dir")]  # beside it: its costs
            out[name] = o["md5"]
    return out


def test_dvc_lock_names_a_shipped_base_for_every_tiny_backbone():
    tiny = [s for s, bb in load_params(ROOT / "params.yaml").backbones.items() if bb.family]
    assert set(_locked_outs()) == {f"{st}@{s}" for st in SHIPPED_STAGES for s in tiny}


def test_the_remote_holds_exactly_the_locked_bases_and_stays_small():
    manifests = {p for p in STORE.rglob("*.dir")}
    locked = _locked_outs()
    assert manifests == {_blob(h) for h in locked.values()}  # nothing missing, nothing stale
    for stage, h in locked.items():
        files = json.loads(_blob(h).read_text())
        assert files, stage
        missing = [f["relpath"] for f in files if not _blob(f["md5"]).exists()]
        assert not missing, (stage, missing)
    blobs = [p for p in STORE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in blobs) < 25_000_000
    assert max(p.stat().st_size for p in blobs) < 2 * 1024 * 1024  # each blob fits git hosting limits
    # and git carries every blob, so a clone has them
    tracked = subprocess.run(
        ["git", "ls-files", "dvc-store"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert {str(p.relative_to(ROOT)) for p in blobs} <= set(tracked)


def test_a_fresh_clone_pulls_the_bases_and_finds_pretraining_up_to_date(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    pulled = subprocess.run([DVC, "pull", *SHIPPED_STAGES], cwd=clone, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    tiny = [s for s, bb in load_params(clone / "params.yaml").backbones.items() if bb.family]
    for slug in tiny:
        assert list(
            (clone / "models" / "base" / slug).glob("model*.safetensors")
        )  # weights, whole or sharded
    status = subprocess.run(
        [DVC, "status", *(f"pretrain@{s}" for s in tiny)], cwd=clone, capture_output=True, text=True
    )
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr


def test_the_retrain_flow_reuses_the_shipped_bases(tmp_path, monkeypatch):
    """The flow's bases task asks DVC: after the pull, pretrain@* is up to date, nothing re-trains."""
    import os

    from flows.retrain import bases_task

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    tf = str(Path(sys.executable).with_name("tokenfocus"))
    if (ROOT / "data" / "train_list.json").exists():  # what `make data` made, copied: the same bytes
        shutil.copytree(ROOT / "data", clone / "data")
    else:
        subprocess.run([tf, "synth"], cwd=clone, check=True, capture_output=True)
    subprocess.run([DVC, "pull", "-q", *SHIPPED_STAGES], cwd=clone, check=True)
    tiny = [s for s, bb in load_params(clone / "params.yaml").backbones.items() if bb.family]
    weights = [w for s in tiny for w in sorted((clone / "models" / "base" / s).glob("model*.safetensors"))]
    assert weights
    before = [os.stat(w).st_ino for w in weights]
    monkeypatch.chdir(clone)
    assert bases_task.fn("params.yaml", str(clone), tiny) == [f"models/base/{s}" for s in tiny]
    assert [os.stat(w).st_ino for w in weights] == before  # not rewritten: nothing was pre-trained
    assert _locked_outs(clone) == _locked_outs()  # dvc.lock untouched
    status = subprocess.run(
        [DVC, "status", *(f"pretrain@{s}" for s in tiny)], cwd=clone, capture_output=True, text=True
    )
    assert "up to date" in status.stdout, status.stdout
