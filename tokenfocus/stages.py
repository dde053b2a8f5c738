"""Stage functions shared by the DVC pipeline (CLI) and the Prefect flows: the work plus its
MLflow logging, written once."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from tokenfocus.config import Params, to_dict
from tokenfocus.evalmuse import write_json_atomic

log = logging.getLogger(__name__)


def _flat(prefix: str, d: dict) -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(f"{prefix}{k}.", v))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out


def _members(slug: str, params: Params) -> list[tuple[Params, Path]]:
    """Bagging members: (params with the member's seed, output folder); member 0 is the plain run."""
    base = Path(params.train.out) / slug
    out = []
    for k in range(max(1, params.stack.bagging_seeds)):
        p = dataclasses.replace(params, train=dataclasses.replace(params.train, seed=params.train.seed + k))
        out.append((p, base if k == 0 else base / f"bag{k}"))
    return out


def fold_models(slug: str, params: Params) -> list[tuple[int, Path]]:
    """(fold, output folder) of the out-of-fold models, when the stacker is fitted out of fold."""
    if params.stack.fit_on == "val":
        return []
    if params.stack.fit_on != "oof":
        raise ValueError(f"stack.fit_on must be 'val' or 'oof', not {params.stack.fit_on!r}")
    return [(k, Path(params.train.out) / slug / f"fold{k}") for k in range(params.split.folds)]


def build_stage(slug: str, params: Params) -> Path | None:
    """``build@<slug>``: the random tiny base, its tokenizer trained on the data's prompts and
    the pre-training questions' words."""
    from tokenfocus.pretrain import corpus
    from tokenfocus.tiny import build

    return build(slug, params, extra_corpus=corpus())


def pretrain_stage(slug: str, params: Params, *, track: bool = True, pid: str | None = None) -> Path | None:
    """``pretrain@<slug>``: the curriculum on the random base; its checks go to the base's
    metadata and to an MLflow run ``pretrain-<slug>``."""
    from tokenfocus.backbones import META_FILE
    from tokenfocus.pretrain import pretrain_base

    out = pretrain_base(slug, params)
    if out is None or not track:
        return out
    import mlflow

    from tokenfocus.tracking import child_run

    report = json.loads((out / META_FILE).read_text()).get("pretrain", {})
    with child_run(params.tracking, f"pretrain-{slug}", kind="pretrain", new=True, pid=pid):
        mlflow.log_params(_flat("pretrain.", to_dict(params.pretrain_for(slug))))
        metrics = pretrain_checks(report)
        # stage figures, nested ones flat: tower_steps, tower_head_accuracy_count, ...
        metrics |= {k.replace(".", "_"): v for k, v in _flat("", report.get("stages", {})).items()}
        metrics["cpu_minutes"] = report.get("cpu_minutes", 0.0)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_dict(report, "pretrain.json")
    return out


def pretrain_checks(report: dict) -> dict[str, float]:
    """A pre-training report's check accuracies, flat: ``check_<attribute>``, ``element_<category>``."""
    out = {f"check_{k}": float(v) for k, v in report.get("check_accuracy", {}).items()}
    return out | {f"element_{k}": float(v) for k, v in report.get("element_accuracy", {}).items()}


def train_stage(slug: str, params: Params, *, track: bool = True, pid: str | None = None) -> dict:
    """Train one backbone (and its bagging members), logging params, curves and summary to its child run."""
    from tokenfocus.train import Trainer

    def run_all(log_fn=None) -> dict:
        summaries = [Trainer(slug, p, out=out, log_fn=log_fn).run() for p, out in _members(slug, params)]
        for k, out in fold_models(slug, params):  # for an out-of-fold stacker: K more models
            Trainer(slug, params, out=out, exclude_fold=k).run()
        return {**summaries[0], "members": len(summaries)}

    from tokenfocus.distributed import world

    if not track or not world().main:  # under torchrun, rank 0 alone logs
        return run_all()
    import mlflow

    from tokenfocus.tracking import child_run, log_dataset, metric_logger

    with child_run(params.tracking, slug, new=True, pid=pid):
        mlflow.log_params(_flat("train.", to_dict(params.train_for(slug))))
        mlflow.log_params(_flat("backbone.", dataclasses.asdict(params.backbone(slug))))
        base_meta = Path(params.backbone(slug).source) / "tokenfocus.json"
        pre = json.loads(base_meta.read_text()).get("pretrain") if base_meta.exists() else None
        if pre:  # what the (shipped) base had learned before fine-tuning
            mlflow.log_metrics({f"base_{k}": v for k, v in pretrain_checks(pre).items()})
        log_dataset(params.validate.data)
        summary = run_all(metric_logger())
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, int | float)})
    return summary


def score_stage(
    slug: str,
    params: Params,
    *,
    splits: tuple[str, ...] | None = None,
    track: bool = True,
    pid: str | None = None,
) -> dict:
    """Score splits with a trained backbone; write eval/<slug>/ metrics and plot data; log them."""
    from tokenfocus.distributed import world
    from tokenfocus.plots import category_accuracy, figures, write_plot_data
    from tokenfocus.predictions import (
        TEST_VARIANTS,
        metrics_of,
        read_table,
        score_backbone,
        scored_splits,
        write_table_submission,
    )
    from tokenfocus.stack import bag_tables
    from tokenfocus.synth import ceiling

    splits = splits or scored_splits(params)
    scores_dir = Path(params.score.out) / slug
    members = _members(slug, params)
    # under torchrun every rank scores its shard of each table; rank 0 merges and goes on alone
    member_metrics = [
        score_backbone(slug, params, splits=splits, model_dir=out / "model", out=scores_dir / f"member{k}")
        for k, (_, out) in enumerate(members)
    ]
    folds = fold_models(slug, params)
    for k, out in folds:  # each train fold scored by the model that never saw it
        score_backbone(
            slug, params, splits=(f"train-fold{k}",), model_dir=out / "model", out=scores_dir / f"fold{k}"
        )
    if not world().main:
        return {}
    metrics = {}
    for split in splits:  # the backbone's table: the members' average (bagging), or member 0 alone
        rows = bag_tables(
            [read_table(scores_dir / f"member{k}" / f"{split}.json") for k in range(len(members))]
        )
        write_json_atomic(scores_dir / f"{split}.json", rows)
        metrics[split] = metrics_of(rows)
        if split == "ntire":
            write_table_submission(scores_dir / "output.json", params, rows)
    oof = [r for k, _ in folds for r in read_table(scores_dir / f"fold{k}" / f"train-fold{k}.json")]
    if oof:
        write_json_atomic(scores_dir / "oof.json", oof)
    out_dir = Path("eval") / slug
    table = Path(params.score.out) / slug / "test.json"
    rows = read_table(table) if table.exists() else []
    summary = {
        "test": metrics.get("test", {}),
        "ntire": metrics.get("ntire", {}),
        "single_test": member_metrics[0].get("test", {}),
        "members": len(members),
        "train": read_metrics(Path(params.train.out) / slug / "metrics.json"),
    }
    for variant in TEST_VARIANTS:  # the test pairs drawn in the held-out style family, or short-keyed
        if variant in metrics:
            summary[variant] = metrics[variant] | {
                "category_accuracy": category_accuracy(read_table(scores_dir / f"{variant}.json"))
            }
    if (Path(params.validate.data) / "latent.json").exists() and rows:
        summary["ceiling_srcc"] = ceiling(params.validate.data, [r["img_path"] for r in rows])
    write_json_atomic(out_dir / "metrics.json", summary)
    if rows:
        write_plot_data(rows, out_dir)
    if track:
        import mlflow

        from tokenfocus.tracking import child_run

        with child_run(params.tracking, slug, pid=pid):
            for split, m in metrics.items():
                mlflow.log_metrics(
                    {f"{split}_{k}": float(v) for k, v in m.items() if isinstance(v, int | float)}
                )
            for split in splits:
                mlflow.log_artifact(str(Path(params.score.out) / slug / f"{split}.json"), "predictions")
            if rows:
                for name, fig in figures(rows, slug).items():
                    mlflow.log_figure(fig, f"plots/{name}")
    return metrics


def read_metrics(path: str | Path) -> dict:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def stack_stage(params: Params) -> dict:
    """Fit the ensemble on held-out predictions (val, or out-of-fold), compare it on test, write
    output.json and metrics."""
    from tokenfocus.predictions import (
        TEST_VARIANTS,
        metrics_of,
        read_table,
        split_records,
        write_table_submission,
    )
    from tokenfocus.stack import comparison, fit_ensemble

    slugs = list(params.backbones)
    fit_split = "oof" if fold_models(slugs[0], params) else "val"
    variants = tuple(
        v for v in TEST_VARIANTS if all((Path(params.score.out) / s / f"{v}.json").exists() for s in slugs)
    )
    tables = {
        split: {s: read_table(Path(params.score.out) / s / f"{split}.json") for s in slugs}
        for split in (fit_split, "test", "ntire", *variants)
    }
    # val rows: no backbone trained on them. oof rows: each came from the fold model that excluded
    # its fold (fold_models, Trainer.exclude_fold), so the full-train check does not apply there.
    train_prompts = set() if fit_split == "oof" else {r.prompt_id for r in split_records(params, "train")}
    ens = fit_ensemble(tables[fit_split], params.stack, train_prompts=train_prompts)
    ens.save(params.stack.out)
    bagged = {}
    if params.stack.bagging_seeds > 1:
        bagged = {s: read_metrics(Path("eval") / s / "metrics.json").get("test", {}) for s in slugs}
        singles = {s: read_table(Path(params.score.out) / s / "member0" / "test.json") for s in slugs}
        rows = comparison(tables["test"], ens, singles=singles, bagged=bagged)
    else:
        rows = comparison(tables["test"], ens)
    ntire = ens.combine(tables["ntire"])
    write_table_submission(Path("eval") / "ensemble" / "output.json", params, ntire)
    test_rows = ens.combine(tables["test"])
    from tokenfocus.plots import category_accuracy
    from tokenfocus.predictions import paired_bootstrap

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


# -- running a backbone stage in its own process (the retrain flow) ------------------------------
def with_threads(params: Params, threads: int | None) -> Params:
    """Params with torch's thread count capped at ``threads`` for training and scoring: stages run
    side by side must not each ask for every core (oversubscribed, all of them crawl)."""
    if not threads:
        return params
    return dataclasses.replace(
        params,
        train=dataclasses.replace(params.train, threads=min(params.train.threads, threads)),
        score=dataclasses.replace(params.score, threads=min(params.score.threads, threads)),
    )


def run_stage(name: str, params_path: str, root: str, slug: str, pid: str, threads: int | None):
    """Run ``train_stage`` or ``score_stage`` (``name``) for one backbone from the project at ``root``,
    with params read there and torch capped at ``threads``; return the stage's result."""
    import os

    from tokenfocus.config import load_params
    from tokenfocus.env import apply_env

    apply_env()
    os.chdir(root)
    params = with_threads(load_params(params_path), threads)
    if params.backbone(slug).nproc > 1:  # data-parallel: the CLI under torchrun, rank 0 reports
        from tokenfocus.distributed import run_ranks

        return run_ranks(name, params_path, slug, pid, params.backbone(slug).nproc)
    stage = {"train": train_stage, "score": score_stage}[name]
    return stage(slug, params, pid=pid)


def run_isolated(name: str, params_path: str, root: str, slug: str, pid: str, threads: int | None) -> dict:
    """Run ``train_stage`` or ``score_stage`` for one backbone in a fresh process; return its result.

    Why: backbone tasks submitted side by side to a thread pool share one interpreter, so their
    Python work (the models' per-layer code, the processors) serialises on the GIL, and the
    concurrent retrain ran 2.2x slower than `dvc repro`, which runs every stage as a process.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_stage, name, params_path, root, slug, pid, threads).result()
