"""Fixtures the code tests share."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gemma():
    """The shipped Gemma base as a scorer (with the defaults' grounding), one per test module: the
    tests that change its ``grounding`` put it back, and no other module sees the change."""
    from tokenfocus.scoring import Scorer

    path = ROOT / "models" / "base" / "fastvlm_gemma"
    assert path.is_dir(), f"{path} is missing: run `make bases`"
    return Scorer.load(path, batch_size=8)
