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
