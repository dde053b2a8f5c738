"""Promotion between registered versions: the gate that moves ``champion`` to ``challenger`` only
when the challenger is better beyond noise, never silently over a broken or unfair champion."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tokenfocus.bootstrap import paired_bootstrap
from tokenfocus.config import Params, TrackingConfig

log = logging.getLogger(__name__)
CHALLENGER, CHAMPION = "challenger", "champion"
#: The run artifact that records which prompts a registered version trained on.
SPLITS_ARTIFACT = "splits.json"


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
    scorer = model.unwrap_python_model().scorer  # tokenfocus.serving.ensemble.EnsembleScorer
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
        "reason": f"challenger {verdict} on test NTIRE by {_num(figs['diff'])} "
        f"(95% CI {_num(figs['ci_low'])}..{_num(figs['ci_high'])}, {figs['prompts']} prompts)",
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


def _num(v) -> str:
    """A signed figure, or "undefined" for NaN/None (models without any ranking)."""
    return "undefined" if v is None or v != v else f"{v:+.4f}"
