"""Running the registered model with `mlflow models serve` on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
        "TOKENFOCUS_SERVE_THREADS": str(serve_threads(params.serve.threads, params.serve.workers)),
        "TOKENFOCUS_SERVE_MAX_BATCH": str(params.serve.max_batch),
        # Measured (docs/benchmarks.md, load test): with glibc's defaults the server's RSS kept
        # growing under a soak of variable-size batches (+15% over 1,500 requests), heap
        # fragmentation, not a leak: buffers over 1 MiB served by mmap go back to the OS when
        # freed, and RSS stays flat (+4-6%). A value the operator set wins.
        **{k: os.environ.get(k, v) for k, v in MALLOC_ENV.items()},
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
        "--workers",
        str(params.serve.workers),
    ]
    return cmd, env


#: glibc allocator settings for the server (see serve_command).
MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": "1048576",
    "MALLOC_TRIM_THRESHOLD_": "1048576",
}


def serve_threads(threads: int, workers: int) -> int:
    """Torch threads per worker: ``threads`` if set, else this machine's cores shared by the workers.

    Why: every worker is its own process; two workers each asking torch for all cores oversubscribe
    the CPU and both slow down.
    """
    if workers < 1:
        raise ValueError(f"serve.workers must be >= 1, got {workers}")
    return threads if threads > 0 else max(1, (os.cpu_count() or 1) // workers)


@dataclass
class _Job:
    args: tuple
    done: threading.Event = field(default_factory=threading.Event)
    result: list | None = None
    error: BaseException | None = None


class MicroBatcher:
    """Scores requests that arrive while another is being scored together, in one batch.

    The server runs each request's ``predict`` in its own thread. One thread at a time scores; when
    it finishes, the next waiting thread takes every queued request (up to ``max_batch`` pairs), so
    a burst of concurrent requests costs a few batched forward passes instead of one pass per
    request, and a lone request waits for nothing.

    Args:
        fn: scores ``(images, prompts, elements)`` lists, one result per pair, in order.
        max_batch: the most pairs scored in one call (1 scores requests one by one).
    """

    def __init__(self, fn: Callable[[list, list, list], list], max_batch: int = 16):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.fn, self.max_batch = fn, max_batch
        self._queue: list[_Job] = []
        self._queue_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self.calls = 0  # batched calls of fn, for tests and logs

    def __call__(self, images: list, prompts: list, elements: list) -> list:
        """Score one request's pairs, batched with whatever else is waiting; return its results."""
        job = _Job((list(images), list(prompts), list(elements)))
        with self._queue_lock:
            self._queue.append(job)
        while not job.done.is_set():
            with self._run_lock:
                if job.done.is_set():
                    break
                self._run(self._take())
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[_Job]:
        """Queued jobs, oldest first, up to max_batch pairs (always at least one job)."""
        with self._queue_lock:
            taken, pairs = [], 0
            while self._queue and (not taken or pairs + len(self._queue[0].args[1]) <= self.max_batch):
                job = self._queue.pop(0)
                taken.append(job)
                pairs += len(job.args[1])
            return taken

    def _run(self, jobs: list[_Job]) -> None:
        images = [x for j in jobs for x in j.args[0]]
        prompts = [x for j in jobs for x in j.args[1]]
        elements = [x for j in jobs for x in j.args[2]]
        self.calls += 1
        try:
            results = self.fn(images, prompts, elements)
        except BaseException as exc:  # every waiting request gets the error, none hangs
            for j in jobs:
                j.error = exc
                j.done.set()
            return
        at = 0
        for j in jobs:
            j.result = results[at : at + len(j.args[1])]
            at += len(j.args[1])
            j.done.set()


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
