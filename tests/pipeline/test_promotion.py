"""The promotion gate and the quality floor, through the real scoring path (``version_rows``)
against real champions in one MLflow sqlite store.

The ``gate`` fixture (tests/gate.py): two ensembles of the shipped Gemma base on a quarter of the
repository's SynthMuse, a good one and a blind one (its projector zeroed, it ignores the image).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.gate import ROOT, _restore, inside
from tokenfocus.config import load_params
from tokenfocus.ensemble_stages import register_stage
from tokenfocus.promote import CHALLENGER, CHAMPION, promote, version_rows
from tokenfocus.registry import log_and_register
from tokenfocus.split import main as split_main


@pytest.fixture(autouse=True)
def _in_gate(gate):
    with inside(gate[1]):
        yield


def _cached(rows_of):
    """The real scoring path, each version scored once per test (a version's rows do not change)."""
    seen = {}

    def rows(tc, version, params):
        if version.version not in seen:
            seen[version.version] = rows_of(tc, version, params)
        return seen[version.version]

    return rows


def _register(p, d, name):
    _restore(d, name)
    return log_and_register(p)


def _alias(p, alias):
    return MlflowClient().get_model_version_by_alias(p.tracking.model_name, alias).version


def _test_metrics(d, name):
    return json.loads((d / "snap" / name / "eval" / "ensemble" / "metrics.json").read_text())["test"]


def test_the_blind_model_really_is_worse(gate):
    p, d = gate
    good, blind = _test_metrics(d, "good"), _test_metrics(d, "blind")
    assert good["final"] > blind["final"] + 0.1, (good, blind)


def test_promotion_through_real_scoring(gate):
    p, d = gate
    v1 = _register(p, d, "blind")
    rows = _cached(version_rows)
    assert promote(p, rows_of=rows)["reason"] == "no champion yet" and _alias(p, CHAMPION) == v1.version

    v2 = _register(p, d, "good")  # clearly better: promoted
    better = promote(p, rows_of=rows)
    assert better["promoted"] and better["ci_low"] > 0, better
    assert 20 < better["prompts"] < len(rows(p.tracking, v2, p)) / 3  # resampled by prompt, not by pair
    assert _alias(p, CHAMPION) == v2.version

    _register(p, d, "blind")  # worse: stays out
    worse = promote(p, rows_of=rows)
    assert not worse["promoted"] and worse["ci_high"] < 0, worse
    assert _alias(p, CHAMPION) == v2.version

    v4 = _register(p, d, "good")  # equal within noise: stays out
    equal = promote(p, rows_of=rows)
    assert not equal["promoted"] and equal["ci_low"] <= 0 <= equal["ci_high"], equal
    assert _alias(p, CHAMPION) == v2.version
    tags = MlflowClient().get_model_version(p.tracking.model_name, v4.version).tags
    assert tags["promotion.rule"].startswith("promote when the lower bound")
    assert tags["split.digest"] == json.loads(Path(p.split.out).read_text())["digest"]
    run_tags = MlflowClient().get_run(v4.run_id).data.tags
    assert run_tags["promotion.promoted"] == "False" and "promotion.rule" in run_tags


def test_a_champion_that_cannot_load_is_not_replaced_silently(gate):
    p, d = gate
    client = MlflowClient()
    champion = client.get_model_version_by_alias(p.tracking.model_name, CHAMPION)
    _register(p, d, "good")
    # break the champion's stored model: its ensemble file is gone
    model_id = champion.source.rsplit("/", 1)[-1]  # models:/m-<id>
    location = client.get_logged_model(model_id).artifact_location.removeprefix("file://")
    (
        Path(location) / "artifacts" / "bundle" / "ensemble" / "ensemble.json"
    ).unlink()  # the pyfunc's artifacts
    refused = promote(p)
    assert not refused["promoted"] and "cannot be loaded or scored" in refused["reason"], refused
    assert _alias(p, CHAMPION) == champion.version
    forced = promote(p, force=True)
    assert forced["promoted"] and forced["forced"] and "(forced)" in forced["reason"]
    assert _alias(p, CHAMPION) == _alias(p, CHALLENGER)


def test_a_champion_that_trained_on_todays_test_prompts_is_no_yardstick(gate):
    p, d = gate
    champion = _alias(p, CHAMPION)
    _register(p, d, "good")
    # today's split moves prompts: some of today's test prompts were the champion's training prompts
    moved = dataclasses.replace(p, split=dataclasses.replace(p.split, seed=p.split.seed + 1))
    split_main(moved.split, d / "data")
    try:
        refused = promote(moved)
    finally:
        split_main(p.split, d / "data")
    assert not refused["promoted"] and "trained on" in refused["reason"], refused
    assert _alias(p, CHAMPION) == champion


def test_quality_floor_refuses_a_model_that_ignores_the_image(gate):
    p, d = gate
    floor = load_params(ROOT / "params.yaml").tracking.quality_floor
    assert floor, "params.yaml sets no quality floor"
    q = dataclasses.replace(p, tracking=dataclasses.replace(p.tracking, quality_floor=floor))
    n_before = len(MlflowClient().search_model_versions(f"name='{p.tracking.model_name}'"))
    _restore(d, "blind")
    out = register_stage(q)
    assert out["registered"] is False and "below the quality floor" in out["reason"], out
    assert json.loads((d / "eval" / "registry.json").read_text())["registered"] is False
    assert len(MlflowClient().search_model_versions(f"name='{p.tracking.model_name}'")) == n_before
    _restore(d, "good")
    assert register_stage(q)["registered"] is True


def test_tokenfocus_predict_scores_a_test_file_with_the_registered_champion(gate):
    """The CLI end to end: the champion is loaded from the registry, not injected."""
    import os
    import subprocess
    import sys

    from tokenfocus.evalmuse import read_submission

    p, d = gate
    from mlflow.exceptions import MlflowException

    try:
        champion = MlflowClient().get_model_version_by_alias(p.tracking.model_name, CHAMPION)
    except MlflowException:  # run alone: make a champion first
        _register(p, d, "good")
        promote(p)
        champion = MlflowClient().get_model_version_by_alias(p.tracking.model_name, CHAMPION)
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("tokenfocus")),
            "predict",
            "--input",
            "data/test.json",
            "--images",
            "data/images",
            "--output",
            "predicted.json",
            "--params",
            str(ROOT / "params.yaml"),
        ],
        cwd=d,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["scored"] == 20 and summary["failed"] == 0
    rows = read_submission(d / "predicted.json")
    assert len(rows) == 20 and all(1.0 <= r.total_score <= 5.0 for r in rows)
    assert len({round(r.total_score, 3) for r in rows}) > 1
    # the same scores as the champion's own pyfunc gives for these pairs
    import mlflow

    scorer = (
        mlflow.pyfunc.load_model(f"models:/{p.tracking.model_name}/{champion.version}")
        .unwrap_python_model()
        .scorer
    )
    from tokenfocus.evalmuse import load_records
    from tokenfocus.images import load_images

    recs = load_records(d / "data" / "test.json")
    images = load_images(d / "data" / "images", [r.img_path for r in recs])
    direct = scorer(
        [images[r.img_path] for r in recs],
        [r.prompt for r in recs],
        [[e.key for e in r.elements] for r in recs],
    )
    assert [round(r.total_score, 4) for r in rows] == pytest.approx(
        [o["total_score"] for o in direct], abs=1e-4
    )
