"""`make ui`: the MLflow UI (sqlite backend, one worker, 127.0.0.1) and the Prefect server with the
retrain deployment served. Prints both URLs; Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flows import schedule  # noqa: E402
from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.env import apply_env  # noqa: E402
from tokenfocus.tracking import tracking_uri  # noqa: E402

MLFLOW_PORT = 5000


def mlflow_ui() -> subprocess.Popen:
    """The MLflow UI on the project's tracking store: one worker, no job runner (about 0.5 GiB)."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "ui",
        "--backend-store-uri",
        tracking_uri(load_params().tracking),
        "--host",
        "127.0.0.1",
        "--port",
        str(MLFLOW_PORT),
        "--workers",
        "1",
    ]
    return subprocess.Popen(cmd, env=env)


def main() -> None:
    apply_env()
    ui = mlflow_ui()
    print(f"MLflow UI:  http://127.0.0.1:{MLFLOW_PORT}  (registered model: Models > tokenfocus-ensemble)")
    try:
        schedule.main()  # prints the Prefect URL; serves until Ctrl-C, then stops its server
    except KeyboardInterrupt:
        pass
    finally:
        ui.terminate()
        try:
            ui.wait(timeout=15)
        except subprocess.TimeoutExpired:
            ui.kill()
        print("stopped the MLflow UI and the Prefect server")


if __name__ == "__main__":
    main()
