"""`make schedule`: a local Prefect server plus the retrain deployment on the params.yaml cron."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

from tokenfocus.config import load_params
from tokenfocus.env import apply_offline_env

HOST, PORT = "127.0.0.1", 4200


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


def main() -> None:
    apply_offline_env()
    api = f"http://{HOST}:{PORT}/api"
    server = None
    try:
        urllib.request.urlopen(f"{api}/health", timeout=2)
    except OSError:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(PORT)],
            env=os.environ.copy(),
        )
        wait_ready(api)
    os.environ["PREFECT_API_URL"] = api
    from prefect import serve

    cfg = load_params().flows
    print(f"Prefect UI: http://{HOST}:{PORT}  (deployment 'tokenfocus-retrain/scheduled', cron '{cfg.cron}')")
    try:
        serve(deployment(), pause_on_shutdown=False)
    finally:
        if server is not None:
            server.terminate()


if __name__ == "__main__":
    main()
