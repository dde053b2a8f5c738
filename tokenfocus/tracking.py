"""MLflow tracking: one experiment, a parent run per pipeline run, a child run per backbone.

DVC runs each stage in its own process, so runs are found again by tags: the parent by
``tokenfocus.pipeline_id``, a child by ``tokenfocus.backbone`` under that parent. The pipeline
id comes from ``TOKENFOCUS_PIPELINE_ID`` (the Prefect flow sets its flow-run id) or, for DVC,
from the data digest, the params file and the git commit.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tokenfocus.config import TrackingConfig
from tokenfocus.host import host_record

PIPELINE_TAG = "tokenfocus.pipeline_id"
BACKBONE_TAG = "tokenfocus.backbone"
KIND_TAG = "tokenfocus.kind"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used."""


def tracking_uri(cfg: TrackingConfig) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the project's sqlite database."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri


@contextmanager
def store_lock(cfg: TrackingConfig) -> Iterator[None]:
    """Hold a lock across processes on the tracking store while one creates what all share.

    Why: the pipeline's stages run side by side in processes of their own (`tokenfocus repro`, the
    retrain flow's isolated tasks). On a fresh store each would create the sqlite schema, the
    experiment and the pipeline's parent run: two migrations at once fail, and two parents split
    one pipeline run in two. The lock file lies beside a sqlite store, else in the temp folder.
    Reentrant in one process (:func:`setup` runs under the parent's lock).

    Raises:
        TrackingError: the lock file cannot be made (a sqlite store in a folder that is missing or
            not writable); no folder is created for it.
    """
    import tempfile

    from filelock import FileLock

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///") + ".lock")
    else:
        path = Path(tempfile.gettempdir()) / f"tokenfocus-{hashlib.sha1(uri.encode()).hexdigest()[:12]}.lock"
    if not path.parent.is_dir():  # filelock would make the folder; a mistyped store must fail
        raise TrackingError(
            f"MLflow tracking store {uri} unavailable: no folder {path.parent} for {path.name}"
        )
    lock = FileLock(str(path), is_singleton=True)
    try:
        lock.acquire()
    except OSError as exc:
        raise TrackingError(f"MLflow tracking store {uri} unavailable: cannot lock {path}: {exc}") from None
    try:
        yield
    finally:
        lock.release()


def setup(cfg: TrackingConfig):
    """Point MLflow at the store and experiment; fail clearly if the store is unavailable."""
    import mlflow

    os.environ.pop("MLFLOW_RUN_ID", None)  # a stale id would attach our runs to a stranger's
    mlflow.set_tracking_uri(tracking_uri(cfg))
    try:
        with store_lock(cfg):
            return mlflow.set_experiment(cfg.experiment)
    except Exception as exc:
        raise TrackingError(f"MLflow tracking store {tracking_uri(cfg)} unavailable: {exc}") from None


def data_digest(dvc_file: str | Path = "data.dvc") -> str:
    """The dataset's md5 as DVC recorded it (``unknown`` without a data.dvc)."""
    import yaml

    path = Path(dvc_file)
    if not path.exists():
        return "unknown"
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", "unknown")).removesuffix(".dir")


def git_commit() -> str:
    """The current commit, or ``unknown`` outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pipeline_id(params_path: str | Path = "params.yaml") -> str:
    """The id that ties one pipeline run's stages to one parent run."""
    if os.environ.get("TOKENFOCUS_PIPELINE_ID"):
        return os.environ["TOKENFOCUS_PIPELINE_ID"]
    h = hashlib.sha1()
    h.update(data_digest().encode())
    if Path(params_path).exists():
        h.update(Path(params_path).read_bytes())
    h.update(git_commit().encode())
    return h.hexdigest()[:16]


def _find(client, experiment_id: str, query: str):
    runs = client.search_runs(
        [experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


_PARENT_LOCK = threading.Lock()


def parent_run_id(cfg: TrackingConfig, pid: str | None = None) -> str:
    """The parent run of this pipeline run, created on first use."""
    # concurrent tasks in one process, and stages in processes side by side, must not create two
    with _PARENT_LOCK, store_lock(cfg):
        return _parent_run_id(cfg, pid)


def _parent_run_id(cfg: TrackingConfig, pid: str | None) -> str:
    from mlflow import MlflowClient

    exp = setup(cfg)
    client = MlflowClient()
    pid = pid or pipeline_id()
    found = _find(
        client, exp.experiment_id, f"tags.`{PIPELINE_TAG}` = '{pid}' and tags.`{KIND_TAG}` = 'pipeline'"
    )
    if found:
        return found.info.run_id
    run = client.create_run(
        exp.experiment_id,
        run_name=f"pipeline-{pid[:8]}",
        tags={
            PIPELINE_TAG: pid,
            KIND_TAG: "pipeline",
            "git_commit": git_commit(),
            "data_digest": data_digest(),
            **host_tags(host := host_record()),
        },
    )
    client.log_dict(run.info.run_id, host, "environment.json")
    return run.info.run_id


def host_tags(host: dict) -> dict[str, str]:
    """A :func:`~tokenfocus.host.host_record`'s CPU as run tags, to filter runs by in the MLflow UI
    (the record itself is logged as ``environment.json``)."""
    cpu = host["cpu"]
    return {"host.cpu": f"{cpu['model']} ({cpu['signature']})", "host.isa": " ".join(cpu["isa"])}


@contextmanager
def child_run(
    cfg: TrackingConfig, name: str, *, kind: str = "backbone", new: bool = False, pid: str | None = None
) -> Iterator:
    """An active child run (per backbone, or the stacker) under this pipeline's parent.

    Args:
        name: the backbone slug or ``ensemble``.
        kind: ``backbone`` or ``stack``.
        new: start a fresh child (training) rather than reopen the latest one (scoring).

    A failure inside the block marks the child run FAILED (MLflow's context manager does).
    """
    import mlflow
    from mlflow import MlflowClient

    parent = parent_run_id(cfg, pid)
    client = MlflowClient()
    exp_id = client.get_run(parent).info.experiment_id
    existing = (
        None
        if new
        else _find(
            client, exp_id, f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{BACKBONE_TAG}` = '{name}'"
        )
    )
    with mlflow.start_run(run_id=parent, experiment_id=exp_id):
        if existing is not None:
            run = mlflow.start_run(run_id=existing.info.run_id, nested=True)
        else:
            run = mlflow.start_run(
                run_name=name,
                nested=True,
                tags={
                    BACKBONE_TAG: name,
                    KIND_TAG: kind,
                    PIPELINE_TAG: pid or pipeline_id(),
                    "git_commit": git_commit(),
                    **host_tags(host := host_record()),
                },
            )
            # each child records the host it ran on: on a Dask cluster, backbones train apart
            mlflow.log_dict(host, "environment.json")
        with run:
            yield run


def log_dataset(data_root: str | Path, *, context: str = "training") -> None:
    """Log the dataset as an MLflow input, its digest taken from data.dvc."""
    import mlflow
    import pandas as pd

    from tokenfocus.evalmuse import read_json_list

    raws = read_json_list(Path(data_root) / "train_list.json")
    df = pd.DataFrame(
        {
            "prompt_id": [r.get("prompt_id") for r in raws],
            "img_path": [r["img_path"] for r in raws],
            "prompt": [r["prompt"] for r in raws],
        }
    )
    with warnings.catch_warnings():
        # mlflow registers its local artifact source twice (schemes "" and "file"), so every local
        # path "can be interpreted in multiple ways" by two copies of one class: noise in each run
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        ds = mlflow.data.from_pandas(
            df, source=str(Path(data_root).resolve()), name=Path(data_root).name, digest=data_digest()[:36]
        )
    from mlflow.exceptions import MlflowException

    try:
        mlflow.log_input(ds, context=context)
    except MlflowException:  # two backbones logging the same new dataset at once: it exists now
        mlflow.log_input(ds, context=context)


def metric_logger():
    """A ``(metrics, step)`` callback that logs finite numbers to the active run."""
    import math

    import mlflow

    def log(metrics: dict[str, float], step: int) -> None:
        clean = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(float(v))
        }
        if clean:
            mlflow.log_metrics(clean, step=step)

    return log
