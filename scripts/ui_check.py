"""`make ui-check`: what a person sees in the two UIs, rendered by headless Chromium.

Starts `make ui`'s servers (scripts/ui.py) in a process group of their own, renders the MLflow
registered-model page and the Prefect deployment page, saves screenshots under eval/ui/, and fails
if the rendered pages lack the `champion` alias or the retrain deployment's cron schedule. Needs
Debian's `chromium` and a registered model (`make run` first). Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenfocus.config import load_params  # noqa: E402

OUT = Path("eval/ui")
MLFLOW, PREFECT = "http://127.0.0.1:5000", "http://127.0.0.1:4200"


def _wait(url: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"ui-check: {url} did not answer within {timeout:.0f}s")


def _render(chromium: str, url: str, png: Path) -> str:
    """Screenshot ``url`` to ``png`` and return its DOM after the page's scripts ran."""
    common = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000"]
    subprocess.run(
        [*common, f"--screenshot={png}", "--window-size=1600,1000", url], capture_output=True, timeout=120
    )
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    return dom.stdout


def _deployment_id(cron: str) -> str:
    body = json.dumps({"deployments": {"name": {"any_": ["scheduled"]}}}).encode()
    req = urllib.request.Request(
        f"{PREFECT}/api/deployments/filter", data=body, headers={"Content-Type": "application/json"}
    )
    end = time.monotonic() + 120
    while time.monotonic() < end:  # the deployment appears once `serve` has registered it
        with urllib.request.urlopen(req, timeout=10) as r:
            found = [
                d for d in json.load(r) if any(s["schedule"].get("cron") == cron for s in d["schedules"])
            ]
        if found:
            return found[0]["id"]
        time.sleep(2)
    raise SystemExit(f"ui-check: no deployment 'scheduled' with cron {cron!r} registered")


def _clock(cron: str) -> str:
    """How Prefect's page words a daily cron's time ("0 3 * * *" -> "03:00"), else the cron itself."""
    minute, hour = cron.split()[:2]
    return f"{int(hour):02d}:{int(minute):02d}" if minute.isdigit() and hour.isdigit() else cron


def main() -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("ui-check: no chromium; install Debian's package: apt-get install chromium")
    params = load_params()
    name, cron = params.tracking.model_name, params.flows.cron
    OUT.mkdir(parents=True, exist_ok=True)
    ui = subprocess.Popen([sys.executable, "scripts/ui.py"], start_new_session=True)
    problems = []
    try:
        _wait(f"{MLFLOW}/health")
        _wait(f"{PREFECT}/api/health")
        dom = _render(chromium, f"{MLFLOW}/#/models/{name}", OUT / "mlflow_registered_model.png")
        if "champion" not in dom:
            problems.append(f"the MLflow page of {name} shows no 'champion' alias (registered? `make run`)")
        dep = _deployment_id(cron)
        dom = _render(chromium, f"{PREFECT}/deployments/deployment/{dep}", OUT / "prefect_deployment.png")
        if cron not in dom and _clock(cron) not in dom:
            problems.append(f"the Prefect deployment page shows no schedule {cron!r}")
    finally:
        os.killpg(ui.pid, signal.SIGINT)  # Ctrl-C: scripts/ui.py stops both servers
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
    for p in problems:
        print("ui-check:", p, file=sys.stderr)
    print(f"screenshots: {', '.join(str(p) for p in sorted(OUT.glob('*.png')))}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
