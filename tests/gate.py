"""A trained ensemble of the shipped Gemma base, and the same ensemble blind (its projector zeroed,
so it ignores the image), on a quarter of the repository's SynthMuse: what the promotion gate,
the quality floor and the behaviour of what is served are tested on.

Used as the session fixture ``gate`` (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path

import mlflow
import pytest

from tokenfocus.config import load_params
from tokenfocus.ensemble_stages import stack_stage
from tokenfocus.split import main as split_main
from tokenfocus.stages import score_stage, train_stage

ROOT = Path(__file__).resolve().parents[1]
SLUG = "fastvlm_gemma"
KEPT = ("models/trained", "models/ensemble", "work/scores", "eval")


def without_counting(grounding):
    """The grounding with counting elements asked alone. Why: reading a count from the parts asks
    eight views of a pair (docs/styles.md); the pipeline tests check orchestration, and with it
    `make test` ran past its 15 minutes. tests/code/test_counting.py and the count probe
    (tests/model/test_style_behaviour.py) test the reading itself."""
    import dataclasses

    return dataclasses.replace(grounding, count_categories=[])


def _snapshot(d: Path, name: str) -> None:
    for rel in KEPT:
        shutil.copytree(d / rel, d / "snap" / name / rel, dirs_exist_ok=False)


def _restore(d: Path, name: str) -> None:
    for rel in KEPT:
        shutil.rmtree(d / rel, ignore_errors=True)
        shutil.copytree(d / "snap" / name / rel, d / rel)


def _blind(model_dir: Path) -> None:
    """Zero the projector: every image becomes the same image tokens, so the model ignores it."""
    from safetensors.torch import load_file, save_file

    zeroed = 0
    for f in model_dir.glob("*.safetensors"):
        w = load_file(f)
        for k, v in w.items():
            if "projector" in k:
                v.zero_()
                zeroed += 1
        save_file(w, f, metadata={"format": "pt"})
    assert zeroed, f"no projector weights in {model_dir}"


def _subset(src: Path, dest: Path, prompts: int = 240, ntire: int = 20) -> None:
    """The repository's SynthMuse, cut to ``prompts`` prompts (test split about 35 of them) and
    ``ntire`` unlabelled pairs: the same kind of data, a quarter of the scoring time."""
    dest.mkdir()
    os.symlink(src / "images", dest / "images")
    rows = json.loads((src / "train_list.json").read_text())
    keep = sorted({r["prompt_id"] for r in rows})[:prompts]
    (dest / "train_list.json").write_text(json.dumps([r for r in rows if r["prompt_id"] in keep]))
    for name in ("test.json", "eval.json"):
        (dest / name).write_text(json.dumps(json.loads((src / name).read_text())[:ntire]))


@contextlib.contextmanager
def inside(d: Path):
    """Work in ``d`` with its own MLflow store, as the stage functions expect; restore after."""
    before, uri_before = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    os.chdir(d)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        os.chdir(before)
        if uri_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = uri_before


@pytest.fixture(scope="session")
def gate(tmp_path_factory):
    """(params, folder): the good and blind snapshots under ``folder/snap``; enter it with
    :func:`inside`."""
    base = ROOT / "models" / "base" / SLUG
    assert base.is_dir(), "the shipped base is missing: run `make bases`"
    d = tmp_path_factory.mktemp("gate")
    _subset(ROOT / "data", d / "data")
    p = load_params(ROOT / "params.yaml")
    p.backbones = {
        SLUG: dataclasses.replace(p.backbones[SLUG], source=str(base), tuning="full", lr=None, steps=None)
    }
    p.split = dataclasses.replace(p.split, out=str(d / "work" / "splits.json"))
    p.train = dataclasses.replace(
        p.train, steps=2, eval_every=2, checkpoint_every=2, out=str(d / "models/trained")
    )
    p.score = dataclasses.replace(
        p.score, out=str(d / "work" / "scores"), grounding=without_counting(p.score.grounding)
    )
    # the subset links the benchmark's images, not SynthMuse's redrawings: the stacker fits on val
    p.stack = dataclasses.replace(p.stack, out=str(d / "models" / "ensemble"), fit_styled=0)
    p.tracking = dataclasses.replace(p.tracking, promote_bootstrap=100)
    with inside(d):
        split_main(p.split, d / "data")
        train_stage(SLUG, p, track=False)
        score_stage(SLUG, p, track=False)
        stack_stage(p)
        _snapshot(d, "good")
        _blind(d / "models" / "trained" / SLUG / "model")
        score_stage(SLUG, p, track=False)
        stack_stage(p)
        _snapshot(d, "blind")
        _restore(d, "good")
    return p, d
