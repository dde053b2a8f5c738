"""The Prefect retrain flow under Prefect's test harness, with real MLflow and tiny backbones."""

import json
from importlib import metadata

import pytest
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _champion(name="tokenfocus-ensemble"):
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def test_retrain_flow_registers_and_promotes_then_a_failing_backbone_changes_nothing(project_dir):
    """One flow run registers and promotes; a second, with a backbone that cannot load, fails
    and leaves that champion (one flow run serves both: each costs half a minute)."""
    from flows.retrain import retrain

    decision = retrain(params_path="params.yaml", root=str(project_dir))
    assert decision["promoted"] is True and decision["reason"] == "no champion yet"
    champion = _champion()
    assert champion is not None and champion.version == decision["version"]
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("tokenfocus").experiment_id])
    kinds = sorted(r.data.tags.get("tokenfocus.kind") for r in runs if r.info.status == "FINISHED")
    assert kinds.count("backbone") == 2 and "pipeline" in kinds and "stack" in kinds
    parent = next(r for r in runs if r.data.tags.get("tokenfocus.kind") == "pipeline")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3  # two backbones and the ensemble, all under one parent, no retries
    assert all(r.info.status == "FINISHED" for r in children)
    backbone_run = next(r for r in children if r.data.tags.get("tokenfocus.kind") == "backbone")
    assert "test_srcc" in backbone_run.data.metrics and "train.lr" in backbone_run.data.params
    assert {"base_check_all", "base_element_all"} <= set(backbone_run.data.metrics)  # the base's checks
    # the host each backbone trained on and every package's version: runs whose bits part compare
    assert backbone_run.data.tags["host.cpu"] and parent.data.tags["host.cpu"]
    environment = json.loads(
        open(client.download_artifacts(backbone_run.info.run_id, "environment.json")).read()
    )
    assert environment["packages"]["torch"] == metadata.version("torch")
    # results where people look: the parent's headline metrics and table, the ensemble's plots
    assert {"ensemble_test_final", "ensemble_test_srcc", "best_single_test_final", "ceiling_srcc"} <= set(
        parent.data.metrics
    )
    table = client.download_artifacts(parent.info.run_id, "results.md")
    assert "## Ensembles" in open(table).read()
    ens_run = next(r for r in children if r.data.tags.get("tokenfocus.kind") == "stack")
    plots = {a.path for a in client.list_artifacts(ens_run.info.run_id, "plots")}
    assert {"plots/scatter.png", "plots/category_accuracy.png", "plots/stacker_coefficients.png"} <= plots
    model = client.get_registered_model("tokenfocus-ensemble")
    version = client.get_model_version("tokenfocus-ensemble", decision["version"])
    assert "champion" in model.description and "TokenFocus ensemble" in model.description
    assert "data.dvc digest" in version.description and "Promotion: promoted" in version.description
    assert "95% CI" in version.description
    # and the Prefect flow run's Artifacts tab: the same table and the decision
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as pc:
        arts = pc.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tokenfocus-results"]))
        )
    assert arts and arts[0].type == "markdown"
    assert "ridge stack" in arts[0].data and "Promotion:** promoted" in arts[0].data
    _a_failing_backbone_leaves_the_champion_and_marks_runs_failed(project_dir, decision)


def _a_failing_backbone_leaves_the_champion_and_marks_runs_failed(project_dir, first: dict) -> None:
    import yaml

    from flows.retrain import retrain

    p = yaml.safe_load((project_dir / "params.yaml").read_text())
    # A checkpoint that cannot be loaded: this backbone's train task fails, the other one runs.
    p["backbones"]["llava_siglip_tiny"].update(family="", source="does/not/exist")
    p["flows"]["retries"] = 1
    p["flows"]["retry_delay_s"] = 0
    (project_dir / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(Exception, match="llava_siglip_tiny"):
        retrain(params_path="params.yaml", root=str(project_dir))
    assert _champion().version == first["version"]  # the champion stays
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("tokenfocus").experiment_id])
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert any(r.data.tags.get("tokenfocus.kind") == "pipeline" for r in failed)
    assert any(r.data.tags.get("tokenfocus.backbone") == "llava_siglip_tiny" for r in failed)
    assert len(client.search_model_versions("name='tokenfocus-ensemble'")) == 1  # nothing new registered
    # flows.retries = 1: the failing train task ran twice, then the flow gave up
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterState, TaskRunFilterStateType
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as pc:
        failed_tasks = pc.read_task_runs(
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.FAILED]))
            )
        )
    trains = [t for t in failed_tasks if t.name.startswith("train_task")]
    assert trains and all(t.run_count == 2 for t in trains), [(t.name, t.run_count) for t in trains]


@pytest.mark.slow
def test_retrain_flow_on_a_local_dask_cluster(project_dir):
    import yaml

    from flows.retrain import configured_flow

    p = yaml.safe_load((project_dir / "params.yaml").read_text())
    p["flows"].update(runner="dask", dask_workers=2)
    (project_dir / "params.yaml").write_text(yaml.safe_dump(p))
    flow = configured_flow("params.yaml")
    assert type(flow.task_runner).__name__ == "DaskTaskRunner"
    decision = flow(params_path="params.yaml", root=str(project_dir))
    assert decision["promoted"] is True
    assert _champion() is not None


def test_task_runner_choice_from_params(project_dir):
    from flows.retrain import task_runner
    from tokenfocus.config import FlowConfig

    assert type(task_runner(FlowConfig(runner="threads"))).__name__ == "ThreadPoolTaskRunner"
    assert type(task_runner(FlowConfig(runner="dask"))).__name__ == "DaskTaskRunner"
    remote = task_runner(FlowConfig(runner="dask-address", dask_address="tcp://127.0.0.1:8786"))
    assert remote.address == "tcp://127.0.0.1:8786"
    with pytest.raises(ValueError, match="dask_address is empty"):
        task_runner(FlowConfig(runner="dask-address"))


def test_stages_side_by_side_share_the_machines_cores():
    """No runner that puts stages side by side on one machine asks for more threads than it has
    cores (OpenMP's spinning threads would take each other's: docs/benchmarks.md, section 9)."""
    from flows.retrain import stage_threads
    from tokenfocus.config import FlowConfig

    threads, local = FlowConfig(runner="threads"), FlowConfig(runner="dask", dask_workers=2)
    assert stage_threads(threads, 2, cores=2) == 1
    assert stage_threads(threads, 2, cores=16) == 8
    assert stage_threads(threads, 3, cores=2) == 1  # never none
    assert stage_threads(local, 2, cores=2) == 1
    assert stage_threads(local, 1, cores=2) == 2  # one backbone: one worker busy at a time
    assert stage_threads(FlowConfig(runner="dask", dask_workers=4), 8, cores=16) == 4
    # a scheduler's workers are machines of their own: the params' threads
    assert stage_threads(FlowConfig(runner="dask-address", dask_address="tcp://h:8786"), 2, cores=2) is None


def test_schedule_deploys_the_flow_on_the_params_cron(project_dir):
    """`make schedule`'s deployment, applied to the harness server: named, scheduled, runnable."""
    import yaml
    from prefect.client.orchestration import get_client

    from flows.schedule import deployment

    p = yaml.safe_load((project_dir / "params.yaml").read_text())
    p["flows"]["cron"] = "15 4 * * 1"
    (project_dir / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    dep_id = deployment("params.yaml").apply()
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(dep_id)
        flow = client.read_flow(dep.flow_id)
    assert (flow.name, dep.name) == ("tokenfocus-retrain", "scheduled")
    assert [s.schedule.cron for s in dep.schedules] == ["15 4 * * 1"]
    assert all(s.active for s in dep.schedules)
