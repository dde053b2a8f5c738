"""Logging, registering, describing and promoting the served ensemble (a pyfunc model from code).

The model is code of this package (``tokenfocus/serving/model.py``, models-from-code), not a
pickle of live objects. Its artifacts are the ensemble folder (JSON + skops) and one folder per
backbone (safetensors + processor files, or a LoRA adapter plus its base).
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

from tokenfocus.config import Params, TrackingConfig
from tokenfocus.predictions import paired_bootstrap
from tokenfocus.serving.ensemble import EnsembleScorer, bundle
from tokenfocus.serving.requests import limits_from, parse_records
from tokenfocus.split import trained_on

log = logging.getLogger(__name__)
CHALLENGER, CHAMPION = "challenger", "champion"
#: The run artifact that records which prompts a registered version trained on.
SPLITS_ARTIFACT = "splits.json"
PIP_REQUIREMENTS = [
    "torch",
    "transformers>=5,<6",
    "peft",
    "scikit-learn",
    "skops",
    "pillow",
    "pandas",
    "mlflow>=3",
]


# -- logging, registering, promoting ------------------------------------------------------------
def _example_frame(params: Params):
    import pandas as pd

    from tokenfocus.predictions import split_records

    r = split_records(params, "test")[0]
    data = (Path(params.validate.data) / "images" / r.img_path).read_bytes()
    return pd.DataFrame(
        [
            {
                "prompt": r.prompt,
                "image": base64.b64encode(data).decode(),
                "elements": [e.key for e in r.elements][:3],
            }
        ]
    )


def log_and_register(params: Params, *, metrics: dict[str, float] | None = None, pid: str | None = None):
    """Log the ensemble as a pyfunc model in an ``ensemble`` child run, register it, alias it challenger.

    Returns:
        The new registered model version.
    """
    import tempfile

    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import Array, ColSpec, Schema

    from tokenfocus.tracking import child_run, setup

    tc = params.tracking
    setup(tc)  # fail before any work if the tracking store is unreachable: nothing half-registered
    with tempfile.TemporaryDirectory() as tmp:
        root = bundle(params, Path(tmp) / "bundle")
        serve_cfg = Path(tmp) / "serve_config.json"
        serve_cfg.write_text(
            json.dumps(
                {
                    "batch_size": params.score.batch_size,
                    "allowed_root": "",
                    "max_image_bytes": params.serve.max_image_bytes,
                    "max_pixels": params.serve.max_pixels,
                    "max_batch": params.serve.max_batch,
                }
            )
        )
        example = _example_frame(params)
        scorer = EnsembleScorer(root)
        images, prompts, elements = parse_records(
            example.to_dict(orient="records"), limits_from(params.serve)
        )
        # Explicit input schema: `elements` may be left out of a request (but, when one record of a
        # request has it, give [] to the others: the schema check runs before our code).
        inputs = Schema(
            [
                ColSpec("string", "prompt"),
                ColSpec("string", "image"),
                ColSpec(Array("string"), "elements", required=False),
            ]
        )
        outputs = infer_signature(example, scorer(images, prompts, elements)).outputs
        signature = ModelSignature(inputs=inputs, outputs=outputs)
        with child_run(tc, "ensemble", kind="stack", new=True, pid=pid) as run:
            ens = json.loads((root / "ensemble" / "ensemble.json").read_text())
            mlflow.log_params(
                {
                    "method": ens["method"],
                    "backbones": ",".join(ens["slugs"]),
                    "features": ",".join(ens["features"]),
                    "element_method": ens["element_method"],
                }
            )
            if "ridge" in ens:
                coef = {f"coef_{i}": c for i, c in enumerate(ens["ridge"]["coef"])}
                mlflow.log_metrics(
                    {
                        **coef,
                        "ridge_alpha": ens["ridge"]["alpha"],
                        "ridge_intercept": ens["ridge"]["intercept"],
                    }
                )
            mlflow.log_dict(ens, "ensemble.json")
            # which prompts it trained on: a later promotion refuses to test it on any of them
            splits = json.loads(Path(params.split.out).read_text())
            mlflow.log_dict(
                {"digest": splits.get("digest"), "trained_on": trained_on(params.split.out)}, SPLITS_ARTIFACT
            )
            if metrics:
                mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("serving") / "model.py"),
                artifacts={"bundle": str(root), "serve_config": str(serve_cfg)},
                code_paths=[str(Path(__file__).parent)],
                signature=signature,
                input_example=example,
                pip_requirements=PIP_REQUIREMENTS,
                registered_model_name=tc.model_name,
            )
            run_id = run.info.run_id
    client = MlflowClient()
    version = client.get_model_version(tc.model_name, str(info.registered_model_version))
    client.set_registered_model_alias(tc.model_name, CHALLENGER, version.version)
    client.set_model_version_tag(tc.model_name, version.version, "run_id", run_id)
    client.set_model_version_tag(tc.model_name, version.version, "split.digest", str(splits.get("digest")))
    log.info("registered %s version %s as %s", tc.model_name, version.version, CHALLENGER)
    return version


def describe(
    params: Params, version: str, summary: dict, decision: dict, *, pid: str | None, headline: dict
) -> str:
    """Descriptions of the registered model and the new version, the parent run's headline
    metrics and results table, and the ensemble run's plots. Returns the version description."""
    import mlflow
    from mlflow import MlflowClient

    from tokenfocus.report import main as report
    from tokenfocus.tracking import child_run, data_digest, parent_run_id

    tc = params.tracking
    client = MlflowClient()
    ens = summary.get("test", {})
    gain = summary.get("vs_best_single", {})
    what = (
        f"TokenFocus ensemble ({summary.get('method', '?')} stack) of "
        f"{', '.join(params.backbones)}: each backbone scores the first answer token of a 1..5 "
        "question and of one yes/no question per element; the stacker combines their scores "
        "and element probabilities."
    )
    lines = [
        what,
        f"Data: data.dvc digest {data_digest()}.",
        "Test (SynthMuse test split): "
        + ", ".join(
            f"{k} {ens[k]:.4f}" for k in ("final", "srcc", "plcc", "element_acc") if ens.get(k) is not None
        )
        + ".",
    ]
    if gain:
        lines.append(
            f"vs best single ({gain['backbone']}): NTIRE {gain['diff']:+.4f}, "
            f"95% CI [{gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}]."
        )
    lines.append(
        f"Promotion: {'promoted to champion' if decision.get('promoted') else 'not promoted'} "
        f"({decision.get('reason', '')}). Rule: {decision.get('rule', rule_text(tc))}"
        + (" (forced)." if decision.get("forced") else ".")
    )
    text = "\n".join(lines)
    client.update_model_version(tc.model_name, version, description=text)
    client.update_registered_model(
        tc.model_name,
        description=what + f" Aliases: '{CHALLENGER}' is the latest registered, '{CHAMPION}' the "
        f"served one. Promotion rule: {rule_text(tc)}.",
    )
    parent = parent_run_id(tc, pid)
    client.log_batch(parent, metrics=[mlflow.entities.Metric(k, v, 0, 0) for k, v in headline.items()])
    client.log_text(parent, report(params, write=False), "results.md")
    rows_path = Path(params.stack.out) / "test_predictions.json"
    if rows_path.exists():
        from tokenfocus.plots import figures

        rows = json.loads(rows_path.read_text())
        figs = figures(rows, "ensemble")
        import matplotlib.pyplot as plt

        fitted = json.loads((Path(params.stack.out) / "ensemble.json").read_text())
        coef = fitted.get("ridge")
        if coef:
            names = [f"{s}:{f}" for s in fitted["slugs"] for f in fitted["features"]]
            fig, ax = plt.subplots(figsize=(6, 0.25 * len(names) + 1))
            ax.barh(names, coef["coef"])
            ax.set(xlabel="ridge coefficient (standardised features)", title="stacker")
            fig.tight_layout()
            figs["stacker_coefficients.png"] = fig
        with child_run(tc, "ensemble", kind="stack", pid=pid):
            for name, fig in figs.items():
                mlflow.log_figure(fig, f"plots/{name}")
                plt.close(fig)
    return text


def _alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _finished(client, version) -> tuple[bool, str]:
    """Whether the version's run, and its pipeline's parent run, both ended well."""
    run = client.get_run(version.run_id)
    if run.info.status != "FINISHED":
        return False, f"run {version.run_id} is {run.info.status}"
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent and client.get_run(parent).info.status == "FAILED":
        return False, f"pipeline run {parent} FAILED"
    return True, "finished"


def version_rows(tc: TrackingConfig, version, params: Params) -> list[dict]:
    """A registered version's predictions on the current test split."""
    import mlflow

    from tokenfocus.images import load_images
    from tokenfocus.predictions import split_records

    model = mlflow.pyfunc.load_model(f"models:/{tc.model_name}/{version.version}")
    scorer: EnsembleScorer = model.unwrap_python_model().scorer
    records = split_records(params, "test")
    images = load_images(Path(params.validate.data) / "images", [r.img_path for r in records])
    out = scorer(
        [images[r.img_path] for r in records],
        [r.prompt for r in records],
        [[e.key for e in r.elements] for r in records],
    )
    return [
        {
            "img_path": r.img_path,
            "prompt_id": r.prompt_id,
            "score": o["total_score"],
            "elements": o["element_scores"],
            "gt_score": r.total_score,
            "gt_elements": r.element_score,
        }
        for r, o in zip(records, out, strict=True)
    ]


def trained_prompts(client, version) -> set[str] | None:
    """The prompt ids a registered version trained on (train and val), from its run's
    ``splits.json``; None for a version registered without one."""
    import mlflow

    try:
        path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=SPLITS_ARTIFACT)
    except Exception:  # an older version, logged before the record existed
        return None
    return set(json.loads(Path(path).read_text())["trained_on"])


def rule_text(tc: TrackingConfig) -> str:
    """The promotion rule in words, as tags and descriptions show it."""
    if tc.promote_rule == "ci_low":
        return (
            f"promote when the lower bound of the 95% bootstrap CI (prompts resampled, "
            f"{tc.promote_bootstrap} draws) of challenger - champion test NTIRE > {tc.promote_min_delta:g}"
        )
    return f"promote when challenger - champion test NTIRE > {tc.promote_min_delta:g} (point estimate)"


def _compare(client, tc: TrackingConfig, champion, challenger, params: Params, rows_of, force: bool) -> dict:
    """The gate between a champion and a challenger: what they are compared on, and the verdict."""
    from tokenfocus.predictions import split_records

    seen = trained_prompts(client, champion)
    test = {r.prompt_id for r in split_records(params, "test")}
    if seen is None or seen & test:
        what = (
            "registered no split record"
            if seen is None
            else f"trained on {len(seen & test)} of today's {len(test)} test prompts"
        )
        if not force:
            return {
                "promoted": False,
                "reason": f"champion v{champion.version} {what}: no fair comparison (force to promote)",
            }
        log.warning("promotion: champion v%s %s; forced", champion.version, what)
    try:
        champion_rows = rows_of(tc, champion, params)
    except Exception as exc:  # noqa: BLE001 - any failure to load or score is reported, not raised
        why = f"champion v{champion.version} cannot be loaded or scored: {type(exc).__name__}: {exc}"
        if force:
            return {"promoted": True, "reason": why + " (forced)"}
        return {"promoted": False, "reason": why + "; not promoted (fix it, or force)"}
    figs = paired_bootstrap(
        champion_rows, rows_of(tc, challenger, params), n=tc.promote_bootstrap, seed=tc.promote_seed
    )
    # NaN (undefined scores) is never better
    measure = figs["ci_low"] if tc.promote_rule == "ci_low" else figs["diff"]
    better = bool(measure > tc.promote_min_delta)
    verdict = "better" if better else "not better beyond noise" if figs["diff"] > 0 else "not better"
    return {
        **figs,
        "promoted": better,
        "reason": f"challenger {verdict} on test NTIRE by {figs['diff']:+.4f} "
        f"(95% CI {figs['ci_low']:+.4f}..{figs['ci_high']:+.4f}, {figs['prompts']} prompts)",
    }


def promote(params: Params, *, force: bool | None = None, rows_of=None) -> dict[str, Any]:
    """Move ``champion`` to the challenger only if it is better on the test split (NTIRE score),
    by the rule of ``tracking.promote_rule`` (see :func:`rule_text`).

    Never promoted: a challenger whose run failed or did not finish; one compared with a champion
    that cannot be loaded or scored, or that trained on today's test prompts (unless forced). With
    no champion, a finished challenger becomes champion. The decision, its figures and the rule
    are returned, written to ``eval/promotion.json`` and set as tags on the challenger version and
    its run.

    Args:
        force: promote over a broken or unfair champion (default ``tracking.promote_force``).
        rows_of: ``(tracking_config, version, params) -> prediction rows``; defaults to loading
            the version from the registry and scoring the test split.
    """
    rows_of = rows_of or version_rows
    from mlflow import MlflowClient

    from tokenfocus.evalmuse import write_json_atomic
    from tokenfocus.tracking import setup

    tc = params.tracking
    force = tc.promote_force if force is None else force
    setup(tc)
    client = MlflowClient()
    challenger = _alias(client, tc.model_name, CHALLENGER)
    if challenger is None:
        raise ValueError(f"{tc.model_name} has no '{CHALLENGER}' version to promote")
    champion = _alias(client, tc.model_name, CHAMPION)
    decision: dict[str, Any] = {
        "challenger": challenger.version,
        "champion_before": champion.version if champion else None,
        "rule": rule_text(tc),
        "forced": bool(force),
    }
    ok, why = _finished(client, challenger)
    if not ok:
        decision.update(promoted=False, reason=f"challenger not promotable: {why}")
    elif champion is None:
        decision.update(promoted=True, reason="no champion yet")
    elif champion.version == challenger.version:
        decision.update(promoted=False, reason="challenger is already champion")
    else:
        decision.update(_compare(client, tc, champion, challenger, params, rows_of, force))
    if decision["promoted"]:
        client.set_registered_model_alias(tc.model_name, CHAMPION, challenger.version)
    decision["champion_after"] = challenger.version if decision["promoted"] else decision["champion_before"]
    for k in ("promoted", "reason", "rule", "forced"):
        client.set_model_version_tag(tc.model_name, challenger.version, f"promotion.{k}", str(decision[k]))
        client.set_tag(challenger.run_id, f"promotion.{k}", str(decision[k]))
    write_json_atomic("eval/promotion.json", decision)
    log.info("promotion: %s", decision["reason"])
    return decision
