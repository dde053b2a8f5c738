"""Shared fixtures: a small SynthMuse dataset and offline, isolated settings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tokenfocus.config import SynthConfig
from tokenfocus.env import apply_offline_env

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    apply_offline_env(override=True)
    os.environ.pop("MLFLOW_RUN_ID", None)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


SMALL = SynthConfig(seed=5, n_prompts=24, n_test_prompts=4, image_size=64)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """A small SynthMuse root (120 labelled pairs), generated once per session."""
    from tokenfocus.synth import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    generate(SMALL, root)
    return root


@pytest.fixture
def data_copy(small_data, tmp_path) -> Path:
    """A private, mutable copy of the small dataset."""
    dest = tmp_path / "data"
    shutil.copytree(small_data, dest)
    return dest


#: Tests build bases through the pre-training code path, with a few steps (the default takes
#: 1-2 CPU-minutes per backbone; tests/model builds one base with the default).
PRETRAIN_STEPS = 2

FAMILIES = {"idefics3_tiny": "idefics3", "llava_siglip_tiny": "llava", "gemma3_tiny": "gemma3"}


@pytest.fixture(scope="session")
def tiny_params(small_data, tmp_path_factory):
    """Repo params pointed at the small dataset, with tiny backbones built once per session."""
    import dataclasses

    from tokenfocus.backbones import build
    from tokenfocus.config import load_params
    from tokenfocus.split import main as split_main

    work = tmp_path_factory.mktemp("work")
    p = load_params(ROOT / "params.yaml")
    p.validate = dataclasses.replace(p.validate, data=str(small_data), report=str(work / "validation.json"))
    p.split = dataclasses.replace(p.split, out=str(work / "splits.json"), folds=3)
    p.train = dataclasses.replace(
        p.train,
        out=str(work / "trained"),
        steps=4,
        batch_size=4,
        eval_every=2,
        checkpoint_every=2,
        patience=10,
    )
    p.score = dataclasses.replace(p.score, out=str(work / "scores"), batch_size=8)
    p.pretrain = dataclasses.replace(p.pretrain, steps=PRETRAIN_STEPS, scenes=16, check_scenes=16)
    p.stack = dataclasses.replace(p.stack, out=str(work / "ensemble"))
    for slug in p.backbones:
        p.backbones[slug].source = str(work / "base" / slug)
        p.backbones[slug].pretrain = {}  # the short test pre-training for every backbone
    split_main(p.split, small_data)
    for slug in p.backbones:
        build(slug, p)
    return p


def write_tiny_params(
    dest: Path, *, backbones=("idefics3_tiny", "llava_siglip_tiny"), steps: int = 2, data: str = "data"
) -> Path:
    """A params.yaml for pipeline tests: the repo's, with 2 backbones and a few steps."""
    import yaml

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["backbones"] = {k: v for k, v in p["backbones"].items() if k in backbones}
    for entry in p["backbones"].values():
        entry.pop("pretrain", None)  # the short test pre-training for every backbone
    p["validate"]["data"] = data
    p["train"].update(steps=steps, batch_size=4, eval_every=steps, checkpoint_every=steps)
    p["pretrain"].update(steps=PRETRAIN_STEPS, scenes=16, check_scenes=16)
    p["tracking"]["promote_bootstrap"] = 10
    p["split"]["folds"] = 3
    dest.write_text(yaml.safe_dump(p, sort_keys=False))
    return dest


@pytest.fixture
def project_dir(small_data, tmp_path, monkeypatch):
    """A working directory laid out like the repo, with tiny params and its own MLflow store."""
    os.symlink(small_data, tmp_path / "data")
    write_tiny_params(tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path
