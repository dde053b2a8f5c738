"""The tracking store shared by stages that run side by side, each in a process of its own."""

import multiprocessing as mp

from tokenfocus.config import TrackingConfig

PROCESSES = 4


def _parent(uri: str, barrier, out) -> None:
    """One stage's process: wait for the others, then find or create the pipeline's parent run."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    import mlflow  # noqa: F401  (imported before the barrier: the calls below start together)

    from tokenfocus.tracking import parent_run_id

    barrier.wait()
    out.put(parent_run_id(TrackingConfig(experiment="race"), pid="side-by-side"))


def test_stages_side_by_side_on_a_fresh_store_share_one_experiment_and_one_parent_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_parent, args=(uri, barrier, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    # each process created the schema, the experiment or the parent, or found them: none failed
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    ids = {out.get(timeout=5) for _ in procs}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert len(runs) == 1 and ids == {runs[0].info.run_id}


def test_a_store_in_a_missing_folder_is_a_clear_error_and_no_folder_is_made(tmp_path, monkeypatch):
    import pytest

    from tokenfocus.tracking import TrackingError, parent_run_id

    missing = tmp_path / "no" / "such"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing / 'mlflow.db'}")
    with pytest.raises(TrackingError, match=r"unavailable.*mlflow\.db\.lock"):
        parent_run_id(TrackingConfig(experiment="x"), pid="p")
    assert not (tmp_path / "no").exists()
