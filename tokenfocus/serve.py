"""Running the registered model with `mlflow models serve` on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tokenfocus.config import Params
from tokenfocus.tracking import tracking_uri


def serve_command(
    params: Params, *, model_uri: str | None = None, host: str | None = None, port: int | None = None
) -> tuple[list[str], dict[str, str]]:
    """The `mlflow models serve` command line and environment for the champion (or ``model_uri``)."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri(params.tracking),
        "TOKENFOCUS_ALLOWED_ROOT": str(Path(params.serve.allowed_root).resolve()),
        # mlflow execs uvicorn: the venv's bin must be on PATH
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    uri = model_uri or f"models:/{params.tracking.model_name}@champion"
    cmd = [
        str(bin_dir / "mlflow"),
        "models",
        "serve",
        "-m",
        uri,
        "--env-manager",
        "local",
        "--host",
        host or params.serve.host,
        "--port",
        str(port or params.serve.port),
    ]
    return cmd, env


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Poll ``/ping`` until the server answers; raise if it exits or the time runs out."""
    import requests

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"model server exited with {proc.returncode}")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"model server at {url} not ready after {timeout}s")


def start(params: Params, *, port: int, model_uri: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start the server on 127.0.0.1:``port`` and wait until it answers; return it and its URL."""
    cmd, env = serve_command(params, model_uri=model_uri, host="127.0.0.1", port=port)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
    except BaseException:
        proc.terminate()
        raise
    return proc, url


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
