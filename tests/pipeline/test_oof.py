"""Out-of-fold stacking: every train pair predicted by a model that never saw its fold."""

import dataclasses
import json
from pathlib import Path

from tokenfocus.ensemble_stages import stack_stage
from tokenfocus.predictions import split_records
from tokenfocus.stages import fold_models, score_stage, train_stage
from tokenfocus.train import Trainer


def test_oof_stacker_fits_on_predictions_of_unseen_folds(tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = dataclasses.replace(
        tiny_params,
        backbones={
            k: v for k, v in tiny_params.backbones.items() if k in ("idefics3_tiny", "llava_siglip_tiny")
        },
        stack=dataclasses.replace(tiny_params.stack, fit_on="oof", fit_styled=0, out=str(tmp_path / "ens")),
        train=dataclasses.replace(tiny_params.train, out=str(tmp_path / "trained"), steps=2, eval_every=2),
        score=dataclasses.replace(tiny_params.score, out=str(tmp_path / "scores")),
    )
    folds = fold_models("idefics3_tiny", p)
    assert [k for k, _ in folds] == list(range(p.split.folds))
    for k, _ in folds:  # by construction: the fold model's training data excludes its fold
        tr = Trainer("idefics3_tiny", p, exclude_fold=k)
        tr._load_data()
        held = {r.prompt_id for r in split_records(p, f"train-fold{k}")}
        assert held and not held & {r.prompt_id for r in tr.train_records}
    for slug in p.backbones:
        train_stage(slug, p, track=False)
        score_stage(slug, p, track=False)
    oof = json.loads((Path(p.score.out) / "idefics3_tiny" / "oof.json").read_text())
    train = split_records(p, "train")
    assert sorted(r["img_path"] for r in oof) == sorted(r.img_path for r in train)  # each once
    summary = stack_stage(p)
    assert summary["test"]["n"] == len(split_records(p, "test"))
    assert (Path(p.stack.out) / "stacker.skops").exists()


def test_bagging_averages_seed_members_of_the_backbone_that_asks(tiny_params, tmp_path, monkeypatch):
    """``backbones.<slug>.bagging_seeds`` bags that backbone alone (the default bags Gemma only)."""
    monkeypatch.chdir(tmp_path)
    bags = {"idefics3_tiny": 2, "llava_siglip_tiny": None}
    p = dataclasses.replace(
        tiny_params,
        backbones={
            k: dataclasses.replace(tiny_params.backbones[k], bagging_seeds=n) for k, n in bags.items()
        },
        stack=dataclasses.replace(tiny_params.stack, bagging_seeds=1, out=str(tmp_path / "ens")),
        train=dataclasses.replace(tiny_params.train, out=str(tmp_path / "trained"), steps=2, eval_every=2),
        score=dataclasses.replace(tiny_params.score, out=str(tmp_path / "scores")),
    )
    for slug in bags:
        train_stage(slug, p, track=False)
        score_stage(slug, p, track=False)
    assert (Path(p.train.out) / "idefics3_tiny" / "bag1" / "model").exists()
    assert not (Path(p.train.out) / "llava_siglip_tiny" / "bag1").exists()
    d = Path(p.score.out) / "idefics3_tiny"
    m0, m1, bag = (
        json.loads((d / f).read_text()) for f in ("member0/test.json", "member1/test.json", "test.json")
    )
    assert m0[0]["score"] != m1[0]["score"]  # different seeds, different models
    for a, b, c in zip(m0, m1, bag, strict=True):
        dist = [(x + y) / 2 for x, y in zip(a["distribution"], b["distribution"], strict=True)]
        assert abs(c["score"] - sum((i + 1) * q for i, q in enumerate(dist))) < 1e-9
        key = next(iter(c["elements"]))
        assert abs(c["elements"][key] - (a["elements"][key] + b["elements"][key]) / 2) < 1e-9
    stack_stage(p)
    models = [r["model"] for r in json.loads(Path("eval/ensemble/comparison.json").read_text())]
    assert "bagging (idefics3_tiny)" in models and "bagging (llava_siglip_tiny)" not in models
