"""`make bench-retrain`: the triggered retrain deployment against `dvc repro`, on the same work.

Run after `make run` (the bases pulled, the data validated). Both sides do what a retrain does:
validate, split, train (from the start: trained outputs and checkpoints are removed first) and
score every backbone, stack, register. `dvc repro` is forced through
those stages one after another (each stage is a process, torch on every core); then a real Prefect
server is started, the retrain deployment is served by `make schedule`'s entry point and triggered
through the API, and its run is timed by the server (backbone tasks side by side in the flow).
Writes docs/retrain-bench.md (appended to docs/benchmarks.md by `make bench`) and
eval/retrain_bench.json. Registers two more model versions in the project's MLflow store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flows.schedule import DEPLOYMENT, serve_in_background, start_server, wait_for_deployment  # noqa: E402
from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.env import apply_env  # noqa: E402
from tokenfocus.repro import dvc_executable  # noqa: E402
from tokenfocus.serving.server import free_port  # noqa: E402

AIM = 1.2


def time_dvc(slugs: list[str]) -> dict:
    """Force the retrain's stages through `dvc repro`, timing each one."""
    dvc = dvc_executable()
    stages = [
        "validate",
        "split",
        *(f"train@{s}" for s in slugs),
        *(f"score@{s}" for s in slugs),
        "stack",
        "register",
    ]
    rows, t0 = [], time.perf_counter()
    for stage in stages:
        t = time.perf_counter()
        subprocess.run([dvc, "repro", "-f", "-s", "-q", stage], check=True)
        rows.append({"stage": stage, "seconds": round(time.perf_counter() - t, 1)})
    return {"total_s": round(time.perf_counter() - t0, 1), "stages": rows}


def time_deployment(root: Path) -> dict:
    """Serve and trigger the deployment on a fresh Prefect server; its run's and tasks' times."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with tempfile.TemporaryDirectory() as home:
        os.environ["PREFECT_HOME"] = home
        port = free_port()
        server = start_server(port=port)
        api = f"http://127.0.0.1:{port}/api"
        os.environ["PREFECT_API_URL"] = api
        log = Path(home) / "runner.log"
        runner = serve_in_background(root, log)
        try:
            with temporary_settings(updates={PREFECT_API_URL: api}):
                wait_for_deployment(runner, log)
                t = time.perf_counter()
                run = run_deployment(
                    DEPLOYMENT, parameters={"params_path": "params.yaml", "root": str(root)}, timeout=3600
                )
                wall = time.perf_counter() - t
                if not run.state.is_completed():
                    raise RuntimeError(f"retrain ended {run.state.name}: {log.read_text()[-3000:]}")
                with get_client(sync_client=True) as client:
                    run = client.read_flow_run(run.id)
                    tasks = client.read_task_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
                    )
        finally:
            runner.terminate()
            runner.wait(timeout=60)
            server.terminate()
            server.wait(timeout=30)
    rows = sorted(
        (
            {
                "task": t.name,
                "start_s": round((t.start_time - run.start_time).total_seconds(), 1),
                "seconds": round(t.total_run_time.total_seconds(), 1),
            }
            for t in tasks
            if t.start_time
        ),
        key=lambda r: r["start_s"],
    )
    return {
        "run_s": round(run.total_run_time.total_seconds(), 1),
        "trigger_to_done_s": round(wall, 1),
        "tasks": rows,
    }


def fresh_training(params, slugs: list[str]) -> None:
    """Remove the trained outputs and their checkpoints: each side trains from the start (a
    finished checkpoint would make a forced `dvc repro` resume at its last step, 10 s)."""
    import shutil

    for s in slugs:
        shutil.rmtree(Path(params.train.out) / s, ignore_errors=True)


def main() -> int:
    apply_env()
    root = Path.cwd()
    params = load_params()
    slugs = list(params.backbones)
    fresh_training(params, slugs)
    dvc = time_dvc(slugs)
    fresh_training(params, slugs)
    flow = time_deployment(root)
    ratio = flow["run_s"] / dvc["total_s"]
    result = {"dvc_repro": dvc, "deployment": flow, "ratio": round(ratio, 3), "runner": params.flows.runner}
    Path("eval").mkdir(exist_ok=True)
    Path("eval/retrain_bench.json").write_text(json.dumps(result, indent=1))
    text = (
        "## The retrain deployment vs `dvc repro` (generated by `make bench-retrain`)\n\n"
        f"The same work on {os.cpu_count()} cores: validate, split, train and score {len(slugs)} backbones, "
        f"stack, register. `dvc repro -f -s` runs the stages one after another, each a process with "
        f"torch on every core; the deployment (task runner `{params.flows.runner}`), triggered through a "
        "real Prefect server's API, runs the backbones side by side, each in a process of its own "
        "with its share of the cores. Both train from the start.\n\n"
        "| | seconds |\n|---|---|\n"
        f"| `dvc repro` (forced) | {dvc['total_s']:.0f} |\n"
        f"| retrain deployment: flow run (server's clock) | {flow['run_s']:.0f} |\n"
        f"| retrain deployment: trigger to Completed | {flow['trigger_to_done_s']:.0f} |\n"
        f"| ratio (flow run / dvc repro) | {ratio:.2f} (aim <= {AIM}: {'met' if ratio <= AIM else 'not met'}) |\n\n"
        "| `dvc repro` stage | seconds |\n|---|---|\n"
        + "".join(f"| {r['stage']} | {r['seconds']} |\n" for r in dvc["stages"])
        + "\n| flow task | starts at (s) | seconds |\n|---|---|---|\n"
        + "".join(f"| {r['task']} | {r['start_s']} | {r['seconds']} |\n" for r in flow["tasks"])
    )
    Path("docs/retrain-bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
