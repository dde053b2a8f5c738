"""The ensemble's stages, shared by the DVC pipeline (CLI) and the Prefect flows: stack (fit the
ensemble on held-out predictions, measure it on test) and register (log, register and promote it
in MLflow); the backbones' stages are in :mod:`tokenfocus.stages`."""

from __future__ import annotations

import logging
from pathlib import Path

from tokenfocus.config import Params
from tokenfocus.evalmuse import write_json_atomic
from tokenfocus.stages import fold_models, read_metrics

log = logging.getLogger(__name__)


def stack_stage(params: Params) -> dict:
    """Fit the ensemble on held-out predictions (val, or out-of-fold), compare it on test, write
    output.json and metrics."""
    from tokenfocus.predictions import (
        metrics_of,
        read_table,
        test_variants,
        write_table_submission,
    )
    from tokenfocus.stack import comparison

    slugs = list(params.backbones)
    fit_split = "oof" if fold_models(slugs[0], params) else "val"
    variants = tuple(
        v
        for v in test_variants(params)
        if all((Path(params.score.out) / s / f"{v}.json").exists() for s in slugs)
    )
    tables = {
        split: {s: read_table(Path(params.score.out) / s / f"{split}.json") for s in slugs}
        for split in (fit_split, "test", "ntire", *variants)
    }
    ens = fit_stack(params, tables[fit_split], oof=fit_split == "oof")
    ens.save(params.stack.out)
    bagged_slugs = [s for s in slugs if params.bagging_for(s) > 1]
    if bagged_slugs:  # each backbone's single seed (member 0) beside its bagged average
        bagged = {s: read_metrics(Path("eval") / s / "metrics.json").get("test", {}) for s in bagged_slugs}
        singles = {s: read_table(Path(params.score.out) / s / "member0" / "test.json") for s in slugs}
        rows = comparison(tables["test"], ens, singles=singles, bagged=bagged)
    else:
        rows = comparison(tables["test"], ens)
    ntire = ens.combine(tables["ntire"])
    write_table_submission(Path("eval") / "ensemble" / "output.json", params, ntire)
    test_rows = ens.combine(tables["test"])
    from tokenfocus.bootstrap import paired_bootstrap
    from tokenfocus.plots import category_accuracy

    singles = {r["model"]: r for r in rows if r["model"] in slugs}  # comparison() measured them
    best = max(slugs, key=lambda s: singles[s].get("final") or -1.0)
    boot = paired_bootstrap(
        tables["test"][best],
        test_rows,
        n=params.tracking.promote_bootstrap,
        seed=params.tracking.promote_seed,
    )
    summary = {
        "method": ens.method,
        "test": metrics_of(test_rows),
        "ntire": metrics_of(ntire),
        "weights": dict(zip(ens.slugs, ens.weights, strict=True)),
        # the ensemble's NTIRE score minus the best single backbone's, with a paired bootstrap CI
        "vs_best_single": {
            "backbone": best,
            "best_single_final": boot["champion_final"],
            "ensemble_final": boot["challenger_final"],
            "diff": boot["diff"],
            "ci_low": boot["ci_low"],
            "ci_high": boot["ci_high"],
            "bootstrap": params.tracking.promote_bootstrap,
            "prompts": boot["prompts"],  # resampled by prompt: a prompt's images are not independent
        },
        "category_accuracy": {
            "ensemble": category_accuracy(test_rows),
            **{s: category_accuracy(tables["test"][s]) for s in slugs},
        },
    }
    for variant in variants:  # the same ensemble on the test pairs, redrawn or short-keyed
        rows_v = ens.combine(tables[variant])
        summary[variant] = metrics_of(rows_v) | {
            "category_accuracy": {
                "ensemble": category_accuracy(rows_v),
                **{s: category_accuracy(tables[variant][s]) for s in slugs},
            },
            "backbones": {s: metrics_of(tables[variant][s]) for s in slugs},
        }
    # a bootstrap of models without any ranking (tiny, a few steps) has no interval: None, not NaN
    write_json_atomic(Path("eval") / "ensemble" / "metrics.json", summary)
    write_json_atomic(Path("eval") / "ensemble" / "comparison.json", rows)
    write_json_atomic(Path(params.stack.out) / "test_predictions.json", test_rows)  # for the plots
    from tokenfocus.plots import write_plot_data

    write_plot_data(test_rows, Path("eval") / "ensemble")
    return summary


def fit_stack(
    params: Params,
    held: dict[str, list[dict]],
    *,
    oof: bool = False,
    styled: dict[str, dict[str, list[dict]]] | None = None,
):
    """The ensemble fitted as the stack stage fits it: on ``held`` (val, or out-of-fold rows) per
    backbone, then val's redrawings (:func:`fit_rows`: from ``score.out``, or ``styled``)."""
    from tokenfocus.predictions import split_records
    from tokenfocus.stack import fit_ensemble

    # val rows: no backbone trained on them. oof rows: each came from the fold model that excluded
    # its fold (fold_models, Trainer.exclude_fold), so the full-train check does not apply there.
    train_prompts = set() if oof else {r.prompt_id for r in split_records(params, "train")}
    return fit_ensemble(fit_rows(params, held, styled=styled), params.stack, train_prompts=train_prompts)


def fit_rows(
    params: Params, val: dict[str, list[dict]], *, styled: dict[str, dict[str, list[dict]]] | None = None
) -> dict[str, list[dict]]:
    """The stacker's fit rows: ``val`` per backbone, then its first ``stack.fit_styled``
    redrawings (``val_styled<k>`` tables, the same pairs in fine-tuning's styles), read from
    ``score.out`` or, where given, from ``styled`` (split -> backbone -> table).

    Raises:
        FileNotFoundError: a backbone lacks a redrawing's table (the data holds fewer redrawings
            than asked, or the backbone was scored before ``stack.fit_styled`` was set).
    """
    from tokenfocus.predictions import STYLED_VAL, read_table, styled_root

    rows = {s: list(t) for s, t in val.items()}
    for k in range(params.stack.fit_styled):
        split = f"{STYLED_VAL}{k}"
        for s in rows:
            if styled is not None:
                rows[s] += styled[split][s]
                continue
            path = Path(params.score.out) / s / f"{split}.json"
            if not path.exists():
                raise FileNotFoundError(
                    f"stack.fit_styled: {params.stack.fit_styled} asks for val redrawn in "
                    f"{styled_root(Path(params.validate.data), k).parent}/, but {path} is missing: score {s} again "
                    f"(`tokenfocus score -b {s}`) where the data holds that redrawing "
                    "(synth.styled_copies), or lower stack.fit_styled (real data has none: 0)"
                )
            rows[s] += read_table(path)
    return rows


def register_stage(params: Params, *, pid: str | None = None) -> dict:
    """Register the ensemble (alias challenger), promote it if it beats the champion, and put the
    results where people look: the parent run's headline metrics and results table, the
    ensemble run's plots, and the registered model's and version's descriptions."""
    from tokenfocus.promote import promote
    from tokenfocus.registry import describe, log_and_register

    summary = read_metrics(Path("eval") / "ensemble" / "metrics.json")
    metrics = summary.get("test", {})
    short = quality_shortfalls(metrics, params.tracking.quality_floor)
    if short:
        # below the floor: nothing is registered, and the run and eval/registry.json say why
        out = {
            "registered": False,
            "promoted": False,
            "reason": "below the quality floor: " + "; ".join(short),
        }
        log.warning("not registered: %s", out["reason"])
        if pid:
            from mlflow import MlflowClient

            MlflowClient().set_tag(pid, "registration", out["reason"])
        write_json_atomic(Path("eval") / "registry.json", out)
        return out
    version = log_and_register(params, metrics={f"test_{k}": v for k, v in metrics.items()}, pid=pid)
    decision = promote(params)
    out = {"registered": True, "version": version.version, **decision}
    headline = headline_metrics(params, summary)
    describe(params, version.version, summary, decision, pid=pid, headline=headline)
    write_json_atomic(Path("eval") / "registry.json", out)
    return out


def quality_shortfalls(metrics: dict, floor: dict[str, float]) -> list[str]:
    """Which of the ensemble's test metrics fall below ``tracking.quality_floor`` (a missing or
    undefined metric falls below any floor)."""
    out = []
    for name, least in sorted(floor.items()):
        got = metrics.get(name)
        if got is None or not got >= least:  # NaN is below every floor
            out.append(f"test {name} {got if got is None else f'{got:.4f}'} < {least}")
    return out


def headline_metrics(params: Params, summary: dict) -> dict[str, float]:
    """Ensemble and best-single test metrics, and the label-noise ceiling, flat for MLflow."""
    out = {f"ensemble_test_{k}": v for k, v in summary.get("test", {}).items() if k != "n"}
    best = summary.get("vs_best_single", {}).get("backbone")
    if best:
        m = read_metrics(Path("eval") / best / "metrics.json")
        out |= {f"best_single_test_{k}": v for k, v in m.get("test", {}).items() if k != "n"}
        if m.get("ceiling_srcc") is not None:
            out["ceiling_srcc"] = m["ceiling_srcc"]
    return {k: float(v) for k, v in out.items() if isinstance(v, int | float)}
