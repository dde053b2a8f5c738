"""The backbone stages shared by the DVC pipeline (CLI) and the Prefect flows (build, pretrain,
train, score; the ensemble's stack and register stages are in :mod:`tokenfocus.ensemble_stages`):
the work plus its MLflow logging, written once."""

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
    for k in range(params.bagging_for(slug)):
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


#: ``pretrain@<slug>``'s CPU minutes, a DVC metric tracked by git: they differ run to run where the
#: weights do not, so out of the base's folder a rerun gives it its locked digest (docs/pretraining.md)
PRETRAIN_COSTS = "docs/costs/pretrain-{slug}.json"


def record_costs(slug: str, base: Path) -> tuple[dict, dict]:
    """Move a pre-trained base's CPU times (``cpu_minutes``, and each stage's) from its
    ``tokenfocus.json`` to :data:`PRETRAIN_COSTS`, each file replaced whole; return the report
    left in the base and the costs."""
    from tokenfocus.backbones import META_FILE, write_meta

    meta = json.loads((base / META_FILE).read_text())
    report = meta.get("pretrain", {})  # changed in place
    costs = {"cpu_minutes": report.pop("cpu_minutes", None), "stages": {}}
    for name, stage in report.get("stages", {}).items():
        if isinstance(stage, dict) and "cpu_minutes" in stage:
            costs["stages"][name] = stage.pop("cpu_minutes")
    write_json_atomic(PRETRAIN_COSTS.format(slug=slug), costs)
    write_meta(base, meta)
    return report, costs


def pretrain_stage(slug: str, params: Params, *, track: bool = True, pid: str | None = None) -> Path | None:
    """``pretrain@<slug>``: the curriculum on the random base; its checks go to the base's
    metadata and to an MLflow run ``pretrain-<slug>``, its CPU times to :data:`PRETRAIN_COSTS`."""
    from tokenfocus.pretrain import pretrain_base

    out = pretrain_base(slug, params)
    if out is None:
        return out
    report, costs = record_costs(slug, out)
    if not track:
        return out
    import mlflow

    from tokenfocus.tracking import child_run

    with child_run(params.tracking, f"pretrain-{slug}", kind="pretrain", new=True, pid=pid):
        mlflow.log_params(_flat("pretrain.", to_dict(params.pretrain_for(slug))))
        spent = {f"{k}_cpu_minutes": float(v) for k, v in costs["stages"].items()}
        mlflow.log_metrics(pretrain_metrics({**report, "cpu_minutes": costs["cpu_minutes"]}) | spent)
        mlflow.log_dict({**report, "costs": costs}, "pretrain.json")
    return out


def pretrain_checks(report: dict) -> dict[str, float]:
    """A pre-training report's check accuracies, flat: ``check_<attribute>``, ``element_<category>``."""
    out = {f"check_{k}": float(v) for k, v in report.get("check_accuracy", {}).items()}
    return out | {f"element_{k}": float(v) for k, v in report.get("element_accuracy", {}).items()}


def pretrain_metrics(report: dict) -> dict[str, float]:
    """Everything numeric in a pre-training report, as MLflow metrics: the checks
    (:func:`pretrain_checks`), ``cpu_minutes``, and each stage's figures flat (``tower_steps``,
    ``tower_head_accuracy_count``, ...). A list, a guarded stage's measure per attempt, gives one
    metric per attempt (``pairs_guard_1``, ``pairs_guard_2``); a non-number is left to the report's
    ``pretrain.json``."""
    out = pretrain_checks(report) | {"cpu_minutes": float(report.get("cpu_minutes", 0.0))}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}_{k}" if prefix else str(k), v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value, 1):
                walk(f"{prefix}_{i}", v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[prefix] = float(value)

    walk("", report.get("stages", {}))
    return out


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
        metrics_of,
        read_table,
        score_backbone,
        scored_splits,
        test_variants,
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
    for variant in test_variants(params):  # the test pairs in an unseen style family, or short-keyed
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
