"""The retrain flow: validate -> split -> the pre-trained bases (reused) -> per-backbone
train/score (concurrent) -> stack -> register -> promote. Tasks call the same ``tokenfocus`` stage functions as the DVC pipeline and
pass only paths and small values between them, never models."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.futures import wait
from prefect.runtime import flow_run

from tokenfocus.config import FlowConfig, load_params
from tokenfocus.env import apply_env


def _load(params_path: str, root: str):
    """Each task (maybe on another Dask worker) reads params itself from the project root."""
    apply_env()
    if Path.cwd() != Path(root):
        os.chdir(root)
    return load_params(params_path)


@task(retries=2, retry_delay_seconds=5, persist_result=True)
def validate_task(params_path: str, root: str) -> str:
    from tokenfocus.validate import main

    p = _load(params_path, root)
    report = main(p.validate)
    if not report.success:
        raise ValueError(report.summary())
    return p.validate.report


@task(retries=2, retry_delay_seconds=5, persist_result=True)
def split_task(params_path: str, root: str, report: str) -> str:
    from tokenfocus.split import main

    p = _load(params_path, root)
    main(p.split, p.validate.data)
    return p.split.out


@task(retries=2, retry_delay_seconds=5, persist_result=True)
def bases_task(params_path: str, root: str, slugs: list[str]) -> list[str]:
    """The pre-trained bases, reused: pre-training runs again only where a base is missing or its
    inputs changed. In a DVC project that is exactly `dvc repro`'s decision (after pulling the
    shipped bases); elsewhere, a base folder that exists is reused as it is."""
    import subprocess

    p = _load(params_path, root)
    tiny = [s for s in slugs if p.backbone(s).family]
    if tiny and (Path(root) / "dvc.yaml").exists():
        from tokenfocus.repro import dvc_executable

        dvc = dvc_executable()
        for cmd in (
            [
                "pull",
                "-q",
                "--allow-missing",
                *(f"{stage}@{s}" for stage in ("build", "pretrain") for s in tiny),
            ],
            ["repro", *(f"pretrain@{s}" for s in tiny)],
        ):
            done = subprocess.run([dvc, *cmd], cwd=root, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"dvc {' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")
    else:
        from tokenfocus.stages import build_stage, pretrain_stage

        for s in tiny:
            if not Path(p.backbone(s).source).exists():
                build_stage(s, p)
                pretrain_stage(s, p, track=False)
    return [p.backbone(s).source for s in slugs]


def _backbone_stage(name: str, params_path: str, root: str, slug: str, pid: str, threads, isolate: bool):
    """One backbone's train or score stage: in its own process when tasks share this one."""
    from tokenfocus.stages import run_isolated, run_stage

    run = run_isolated if isolate else run_stage
    return run(name, params_path, root, slug, pid, threads)


@task(persist_result=True)
def train_task(
    params_path: str,
    root: str,
    slug: str,
    pid: str,
    base: str,
    splits: str,
    threads: int | None = None,
    isolate: bool = False,
) -> str:
    _backbone_stage("train", params_path, root, slug, pid, threads, isolate)
    return str(Path(_load(params_path, root).train.out) / slug / "model")


@task(persist_result=True)
def score_task(
    params_path: str,
    root: str,
    slug: str,
    pid: str,
    model_dir: str,
    threads: int | None = None,
    isolate: bool = False,
) -> dict:
    return _backbone_stage("score", params_path, root, slug, pid, threads, isolate)


@task(retries=2, retry_delay_seconds=5, persist_result=True)
def stack_task(params_path: str, root: str, scored: list[dict]) -> dict:
    from tokenfocus.ensemble_stages import stack_stage

    return stack_stage(_load(params_path, root))


@task(retries=2, retry_delay_seconds=5, persist_result=True)
def register_task(params_path: str, root: str, pid: str, stacked: dict) -> dict:
    from prefect.artifacts import create_markdown_artifact

    from tokenfocus.ensemble_stages import register_stage
    from tokenfocus.report import ensemble_gain, ensemble_table

    p = _load(params_path, root)
    decision = register_stage(p, pid=pid)
    # The same table as docs/results.md, on the flow run's Artifacts tab.
    create_markdown_artifact(
        key="tokenfocus-results",
        markdown="## Ensembles on the test split\n\n"
        + ensemble_table()
        + ensemble_gain()
        + f"\n**Promotion:** {'promoted' if decision['promoted'] else 'not promoted'}: {decision['reason']}"
        + f" (challenger v{decision['challenger']}, champion v{decision['champion_after']}).\n",
        description="TokenFocus retrain: results and promotion decision",
    )
    return decision


def _mark_parent_failed(params_path: str, root: str, pid: str) -> None:
    from mlflow import MlflowClient

    from tokenfocus.tracking import parent_run_id

    p = _load(params_path, root)
    MlflowClient().set_terminated(parent_run_id(p.tracking, pid), status="FAILED")


@flow(name="tokenfocus-retrain", log_prints=True)
def retrain(
    params_path: str = "params.yaml", root: str | None = None, backbones: list[str] | None = None
) -> dict:
    """Retrain every backbone concurrently, stack, register a challenger and promote it if better."""
    logger = get_run_logger()
    root = str(Path(root or Path.cwd()).resolve())
    p = _load(params_path, root)
    pid = f"prefect-{flow_run.id or 'local'}"
    slugs = backbones or list(p.backbones)
    with_retries = {"retries": p.flows.retries, "retry_delay_seconds": p.flows.retry_delay_s}
    from tokenfocus.tracking import parent_run_id

    parent_run_id(p.tracking, pid)  # created once, before concurrent tasks look it up
    report = validate_task(params_path, root)
    splits = split_task(params_path, root, report)
    bases = bases_task(params_path, root, slugs)
    # Tasks in this process's thread pool each run in a process of their own; Dask workers are
    # processes already. Either way each gets its share of this machine's cores.
    isolate = p.flows.runner == "threads"
    share = stage_threads(p.flows, len(slugs))
    scored, trained = [], []
    for slug, base in zip(slugs, bases, strict=True):  # submitted together: run in parallel
        with placement(p, slug):
            trained.append(
                train_task.with_options(**with_retries).submit(
                    params_path, root, slug, pid, base, splits, threads=share, isolate=isolate
                )
            )
            scored.append(
                score_task.with_options(**with_retries).submit(
                    params_path, root, slug, pid, trained[-1], threads=share, isolate=isolate
                )
            )
    wait(trained + scored)
    # A score task whose training failed never runs: anything not completed counts as failed.
    failed = [
        s
        for s, t, f in zip(slugs, trained, scored, strict=True)
        if not (t.state.is_completed() and f.state.is_completed())
    ]
    if failed:
        _mark_parent_failed(params_path, root, pid)
        raise RuntimeError(f"backbone task(s) failed: {failed}; nothing registered, champion unchanged")
    stacked = stack_task(params_path, root, [f.result() for f in scored])
    decision = register_task(params_path, root, pid, stacked)
    logger.info("registry: %s", decision)
    return decision


def stage_threads(cfg: FlowConfig, backbones: int, cores: int | None = None) -> int | None:
    """Torch threads for each backbone stage the flow runs side by side on this machine: together
    they ask for no more than its cores.

    Why: OpenMP's idle threads spin, so stages that ask for more threads than there are cores take
    each other's: two scorings at two threads each on two cores ran 3.0x slower than at one thread
    each, two trainings 3.7x (docs/benchmarks.md, section 9). The thread pool runs every backbone
    at once, a local Dask cluster at most ``dask_workers`` of them; a scheduler's workers
    (``dask-address``) are machines of their own, and keep the params' threads.

    Args:
        cfg: the flows block of params.yaml.
        backbones: how many backbones the flow trains and scores.
        cores: this machine's cores (default: all of them).

    Returns:
        The threads for each stage, or None to keep ``train.threads`` and ``score.threads``.
    """
    if cfg.runner == "threads":
        side_by_side = backbones
    elif cfg.runner == "dask":
        side_by_side = min(cfg.dask_workers, backbones)
    else:
        return None
    return max(1, (cores or os.cpu_count() or 1) // max(1, side_by_side))


def placement(p, slug: str):
    """Where a backbone's tasks may run. On a Dask cluster of one's own (``dask-address``), a
    data-parallel backbone (``nproc`` > 1) asks for a worker started with ``--resources GPU=<n>``
    of at least its ranks; the task then launches them with torchrun on that worker."""
    nproc = p.backbone(slug).nproc
    if p.flows.runner == "dask-address" and nproc > 1:
        import dask

        return dask.annotate(resources={"GPU": nproc})
    return contextlib.nullcontext()


def task_runner(cfg: FlowConfig):
    """The task runner params.yaml asks for: threads, a local Dask cluster, or a Dask scheduler."""
    if cfg.runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=4)
    from prefect_dask import DaskTaskRunner

    if cfg.runner == "dask":
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": cfg.dask_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    if cfg.runner == "dask-address":
        if not cfg.dask_address:
            raise ValueError("flows.runner is dask-address but flows.dask_address is empty")
        return DaskTaskRunner(address=cfg.dask_address)
    raise ValueError(f"flows.runner must be threads, dask or dask-address, not {cfg.runner!r}")


def configured_flow(params_path: str = "params.yaml"):
    """The retrain flow with the task runner chosen in params.yaml."""
    return retrain.with_options(task_runner=task_runner(load_params(params_path).flows))


if __name__ == "__main__":
    apply_env()
    configured_flow()()
