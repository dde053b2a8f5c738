"""Registry round trip and promotion against a real MLflow sqlite store and tiny backbones."""

import dataclasses
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import bomb_png
from tokenfocus.ensemble_stages import stack_stage
from tokenfocus.promote import CHALLENGER, CHAMPION, promote
from tokenfocus.registry import log_and_register
from tokenfocus.stack import Ensemble, LeakError, fit_ensemble
from tokenfocus.stages import score_stage, train_stage


@pytest.fixture(scope="module")
def trained(tiny_params, tmp_path_factory):
    """Two tiny backbones trained a few steps, scored, and stacked (no MLflow yet)."""
    import os

    d = tmp_path_factory.mktemp("reg")
    before = os.getcwd()
    os.chdir(d)  # stage functions write eval/ and work/ under the working directory
    p = dataclasses.replace(
        tiny_params,
        backbones={
            k: v
            for k, v in tiny_params.backbones.items()
            if k in ("idefics3_tiny", "gemma3_tiny")  # full and LoRA
        },
    )
    p.tracking = dataclasses.replace(p.tracking, promote_bootstrap=20)
    for slug in p.backbones:
        train_stage(slug, p, track=False)
        score_stage(slug, p, track=False)
    stack_stage(p)
    yield p, d
    os.chdir(before)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return MlflowClient()


def _request(p, n=3):
    from tokenfocus.predictions import split_records

    recs = split_records(p, "test")[:n]
    return recs, pd.DataFrame(
        [
            {
                "prompt": r.prompt,
                "image": str(p.validate.data) + "/images/" + r.img_path,
                "elements": [e.key for e in r.elements],
            }
            for r in recs
        ]
    )


def test_the_stacker_fits_on_val_and_its_redrawings(trained, tmp_path, monkeypatch):
    """``stack.fit_styled`` (params.yaml: 2): val's pairs redrawn in fine-tuning's styles are
    scored and join the stacker's fit rows, beside val's own drawing."""
    from tokenfocus.ensemble_stages import fit_rows
    from tokenfocus.predictions import read_table, scored_splits

    p, _ = trained
    assert p.stack.fit_styled == 2
    assert scored_splits(p)[-2:] == ("val_styled0", "val_styled1")
    scores = Path(p.score.out)
    val = {s: read_table(scores / s / "val.json") for s in p.backbones}
    for slug in p.backbones:
        for k in range(2):
            styled = read_table(scores / slug / f"val_styled{k}.json")
            assert [(r["img_path"], r["gt_score"]) for r in styled] == [
                (r["img_path"], r["gt_score"]) for r in val[slug]
            ]
            # other pixels, other answers: the redrawing's images were read, not val's own
            assert any(abs(a["score"] - b["score"]) > 1e-6 for a, b in zip(val[slug], styled, strict=True))
    assert {s: len(r) for s, r in fit_rows(p, val).items()} == {s: 3 * len(val[s]) for s in val}
    # redrawings' tables given in memory (scripts/test_time_views.py) are used instead of the files
    given = {f"val_styled{k}": {s: val[s][:2] for s in val} for k in range(2)}
    assert fit_rows(p, val, styled=given) == {s: val[s] + val[s][:2] * 2 for s in val}
    monkeypatch.chdir(tmp_path)  # the stage writes eval/ here, not over the module's
    alone = dataclasses.replace(p, stack=dataclasses.replace(p.stack, fit_styled=0, out=str(tmp_path / "e")))
    stack_stage(alone)
    coef = [json.loads((Path(e) / "ensemble.json").read_text())["ridge"]["coef"] for e in (p.stack.out, "e")]
    assert coef[0] != pytest.approx(coef[1])
    more = dataclasses.replace(p, stack=dataclasses.replace(p.stack, fit_styled=3))
    assert "val_styled2" not in scored_splits(more)  # the small data holds two redrawings
    with pytest.raises(FileNotFoundError, match="styled/2/"):
        fit_rows(more, val)


def test_pyfunc_round_trip_matches_the_pipelines_own_predictions(trained, store):
    """The registered model, loaded back through MLflow, answers what the pipeline's stack stage
    wrote for the same test pairs (models/ensemble/test_predictions.json): an independent path
    (per-backbone score tables, then the stacker), not the served bundle a second time."""
    p, _ = trained
    version = log_and_register(p)
    assert client_alias(store, p, CHALLENGER) == version.version
    model = mlflow.pyfunc.load_model(f"models:/{p.tracking.model_name}@{CHALLENGER}")
    assert model.metadata.signature is not None
    recs, frame = _request(p, n=6)
    model.unwrap_python_model().limits.allowed_root = Path(p.validate.data).resolve()
    written = {
        r["img_path"]: r for r in json.loads((Path(p.stack.out) / "test_predictions.json").read_text())
    }
    got = model.predict(frame)
    assert len(got) == len(frame)
    for r, a in zip(recs, got, strict=True):
        b = written[r.img_path]
        assert a["total_score"] == pytest.approx(b["score"], abs=1e-4)
        assert a["element_scores"] == pytest.approx(b["elements"], abs=1e-4)
        assert set(a["backbone_scores"]) == {"idefics3_tiny", "gemma3_tiny"}
        assert sum(a["distribution"]) == pytest.approx(1.0, abs=1e-5)
    assert len({round(a["total_score"], 4) for a in got}) > 1  # the pairs differ: the match means something


def test_served_model_answers_http_and_rejects_bad_records(trained, store, tmp_path):
    """A real `mlflow models serve` on a free loopback port."""
    import base64

    import requests

    from tokenfocus.serving.server import free_port, start

    p, _ = trained
    log_and_register(p)
    promote(p)
    # paths in requests resolve under the data root, as `serve.allowed_root` says
    served = dataclasses.replace(p, serve=dataclasses.replace(p.serve, allowed_root=p.validate.data))
    server, url = start(served, port=free_port())
    try:
        recs, frame = _request(p, 2)
        img_b64 = base64.b64encode(
            (Path(p.validate.data) / "images" / recs[0].img_path).read_bytes()
        ).decode()
        good = [
            {"prompt": recs[0].prompt, "image": img_b64, "elements": [e.key for e in recs[0].elements]},
            {"prompt": recs[1].prompt, "image": "images/" + recs[1].img_path, "elements": []},
        ]
        r = requests.post(f"{url}/invocations", json={"dataframe_records": good}, timeout=60)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert len(preds) == 2 and 1 <= preds[0]["total_score"] <= 5
        assert list(preds[0]["element_scores"]) == [e.key for e in recs[0].elements]
        bad_cases = {
            "record 1: 'image' is neither valid base64 nor a path": [
                good[0],
                {"prompt": "x", "image": "@" * 100, "elements": []},
            ],
            "record 0: missing or empty 'prompt'": [{"prompt": "", "image": img_b64}],
            "outside the allowed root": [{"prompt": "x", "image": "../../etc/passwd"}],
            "cannot decode image": [{"prompt": "x", "image": base64.b64encode(b"not a png" * 20).decode()}],
            # oversized: more bytes than serve.max_image_bytes, and a header claiming 30000x30000
            f"image larger than {p.serve.max_image_bytes} bytes": [
                {"prompt": "x", "image": "A" * (p.serve.max_image_bytes * 4 // 3 + 400)}
            ],
            "exceeds": [{"prompt": "x", "image": base64.b64encode(bomb_png()).decode()}],
        }
        for needle, records in bad_cases.items():
            r = requests.post(f"{url}/invocations", json={"dataframe_records": records}, timeout=60)
            assert r.status_code == 400, (needle, r.status_code, r.text)
            assert needle in r.json()["message"], r.text
        assert (
            requests.post(f"{url}/invocations", json={"dataframe_records": good[:1]}, timeout=60).status_code
            == 200
        )
        # Concurrent one-record requests are micro-batched together in the server: each still gets
        # its own pair's scores, equal to those of the two-record request above.
        from concurrent.futures import ThreadPoolExecutor

        def one(rec):
            return requests.post(f"{url}/invocations", json={"dataframe_records": [rec]}, timeout=60)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, [good[k % 2] for k in range(8)]))
        for k, r in enumerate(answers):
            assert r.status_code == 200, r.text
            got = r.json()["predictions"][0]
            assert abs(got["total_score"] - preds[k % 2]["total_score"]) < 1e-4
            for key, prob in preds[k % 2]["element_scores"].items():
                assert abs(got["element_scores"][key] - prob) < 1e-4
    finally:
        server.terminate()
        server.wait(timeout=30)


def client_alias(client, p, alias):
    return client.get_model_version_by_alias(p.tracking.model_name, alias).version


def _fixed_rows(quality: dict):
    """Prediction rows per version: a version's quality decides how well it ranks the pairs."""
    truth = [1.0, 2.0, 3.0, 4.0, 5.0, 2.5, 3.5, 4.5, 1.5, 3.2]

    def rows_of(tc, version, params):
        q = quality[str(version.version)]
        scores = [
            t if q == "good" else (6 - t if q == "bad" else 3.0 + 0.1 * ((i * 7) % 5))
            for i, t in enumerate(truth)
        ]
        return [
            {
                "img_path": str(i),
                "score": s,
                "elements": {"e (object)": 0.9},
                "gt_score": t,
                "gt_elements": {"e (object)": 1.0},
            }
            for i, (s, t) in enumerate(zip(scores, truth, strict=True))
        ]

    return rows_of


def test_promotion_rules(trained, store):
    p, d = trained
    v1 = log_and_register(p)
    first = promote(p, rows_of=_fixed_rows({}))
    assert first["promoted"] and first["reason"] == "no champion yet"
    assert client_alias(store, p, CHAMPION) == v1.version
    v2 = log_and_register(p)
    worse = promote(p, rows_of=_fixed_rows({str(v1.version): "good", str(v2.version): "bad"}))
    assert not worse["promoted"] and worse["diff"] < 0 and worse["ci_high"] <= 0
    assert client_alias(store, p, CHAMPION) == v1.version
    equal = promote(p, rows_of=_fixed_rows({str(v1.version): "good", str(v2.version): "good"}))
    assert not equal["promoted"] and equal["diff"] == 0
    better = promote(p, rows_of=_fixed_rows({str(v1.version): "bad", str(v2.version): "good"}))
    assert better["promoted"] and better["diff"] > 0
    assert client_alias(store, p, CHAMPION) == v2.version
    tags = store.get_model_version(p.tracking.model_name, v2.version).tags
    assert tags["promotion.promoted"] == "True"
    # a challenger from a failed run is never promoted, however good it looks
    v3 = log_and_register(p)
    store.set_terminated(store.get_model_version(p.tracking.model_name, v3.version).run_id, status="FAILED")
    refused = promote(p, rows_of=_fixed_rows({str(v2.version): "bad", str(v3.version): "good"}))
    assert not refused["promoted"] and "FAILED" in refused["reason"]
    assert client_alias(store, p, CHAMPION) == v2.version
    assert json.loads((d / "eval" / "promotion.json").read_text())["promoted"] is False


def test_stacker_never_sees_training_predictions(trained):
    p, _ = trained
    from tokenfocus.predictions import read_table, split_records

    val = {s: read_table(Path(p.score.out) / s / "val.json") for s in p.backbones}
    train_prompts = {r.prompt_id for r in split_records(p, "train")}
    assert not train_prompts & {r["prompt_id"] for r in val["idefics3_tiny"]}
    ens = fit_ensemble(val, p.stack, train_prompts=train_prompts)
    assert isinstance(ens, Ensemble)
    leaky = {s: rows + [dict(rows[0], prompt_id=next(iter(train_prompts)))] for s, rows in val.items()}
    with pytest.raises(LeakError, match="training prompt"):
        fit_ensemble(leaky, p.stack, train_prompts=train_prompts)
