"""`make schedule`: a local Prefect server plus the retrain deployment on the params.yaml cron."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tokenfocus.config import load_params
from tokenfocus.env import apply_env

HOST, PORT = "127.0.0.1", 4200
DEPLOYMENT = "tokenfocus-retrain/scheduled"


def wait_ready(url: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"Prefect server not ready at {url} after {timeout}s")


def deployment(params_path: str = "params.yaml"):
    """The retrain flow as a deployment named ``scheduled``, on the cron of ``flows.cron``."""
    from flows.retrain import configured_flow

    cfg = load_params(params_path).flows
    return configured_flow(params_path).to_deployment(name="scheduled", cron=cfg.cron)


def start_server(host: str = HOST, port: int = PORT) -> subprocess.Popen:
    """Start ``prefect server start`` on ``host:port`` (database under ``PREFECT_HOME``); wait until ready."""
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://{host}:{port}/api", timeout=90)
    except BaseException:
        server.terminate()
        raise
    return server


def serve_in_background(cwd: str | Path, log: Path) -> subprocess.Popen:
    """``python -m flows.schedule`` (this module's :func:`main`) as a child process, output to ``log``,
    serving against the server of ``PREFECT_API_URL``."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.schedule"], cwd=cwd, env=os.environ.copy(), stdout=out, stderr=out
        )


def wait_for_deployment(runner: subprocess.Popen, log: Path, timeout: float = 120):
    """The served deployment once the server knows it; raise with the runner's log if it never comes."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    end = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < end:
            if runner.poll() is not None:
                raise RuntimeError(f"`python -m flows.schedule` exited: {log.read_text()[-3000:]}")
            try:
                return client.read_deployment_by_name(DEPLOYMENT)
            except ObjectNotFound:
                time.sleep(1)
    raise RuntimeError(f"deployment {DEPLOYMENT} not served after {timeout}s: {log.read_text()[-3000:]}")


def main() -> None:
    """Serve the deployment against ``PREFECT_API_URL`` if set, else a local server (started if needed)."""
    apply_env()
    api = os.environ.get("PREFECT_API_URL") or f"http://{HOST}:{PORT}/api"
    server = None
    try:
        urllib.request.urlopen(f"{api}/health", timeout=2)
    except OSError:
        if os.environ.get("PREFECT_API_URL"):
            raise RuntimeError(f"no Prefect server answers at PREFECT_API_URL={api}") from None
        server = start_server()
    os.environ["PREFECT_API_URL"] = api
    from prefect import serve

    cfg = load_params().flows
    ui = api.removesuffix("/api")
    print(f"Prefect UI: {ui}  (deployment 'tokenfocus-retrain/scheduled', cron '{cfg.cron}')", flush=True)
    try:
        serve(deployment(), pause_on_shutdown=False)
    finally:
        if server is not None:
            server.terminate()


if __name__ == "__main__":
    main()
