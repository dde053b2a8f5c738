"""The retrain deployment on a real Prefect server (not the test harness), triggered through its API."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prefect_api(tmp_path, monkeypatch):
    """`prefect server start` on a free loopback port with its own database; its API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.schedule import start_server
    from tokenfocus.serving.server import free_port

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    port = free_port()
    server = start_server(port=port)
    api = f"http://127.0.0.1:{port}/api"
    monkeypatch.setenv("PREFECT_API_URL", api)  # for the processes started below
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):  # for this one
            yield api
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow  # ~60 s with its Prefect server: the flow itself runs in test_retrain_flow (make test)
def test_triggered_deployment_completes_and_registers_a_challenger(project_dir, prefect_api, tmp_path):
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    from flows.schedule import DEPLOYMENT, serve_in_background, wait_for_deployment
    from tokenfocus.config import load_params

    log = tmp_path / "runner.log"
    runner = serve_in_background(ROOT, log)  # `make schedule`'s own entry point
    try:
        deployment = wait_for_deployment(runner, log)
        cron = load_params(ROOT / "params.yaml").flows.cron
        assert [s.schedule.cron for s in deployment.schedules] == [cron]
        run = run_deployment(
            DEPLOYMENT, parameters={"params_path": "params.yaml", "root": str(project_dir)}, timeout=900
        )
        assert run.state.is_completed(), f"{run.state}: {log.read_text()[-3000:]}"
    finally:
        runner.terminate()
        runner.wait(timeout=60)
    from tokenfocus.tracking import PIPELINE_TAG

    client = MlflowClient()
    version = client.get_model_version_by_alias("tokenfocus-ensemble", "challenger")
    ensemble_run = client.get_run(version.tags["run_id"])
    parent = client.get_run(ensemble_run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags[PIPELINE_TAG] == f"prefect-{run.id}"  # registered by this very flow run
