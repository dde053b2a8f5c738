"""Reproduce the pipeline: `dvc repro`, with each backbone's train and score stages side by side.

Why: one `dvc repro` runs one stage at a time, and each stage's torch takes every core it is
given. On the 2-core target two backbones' stages at one thread each, side by side, finish
sooner than one after the other at two (docs/benchmarks.md, section 9: training 1.41x, scoring
1.73x the time of one stage alone, for two stages' work). DVC is built for this: it releases the
repository's lock while a stage's command runs and guards the stage's paths with read and write
locks, so each backbone's `train@<slug>` and then `score@<slug>` run beside the others'. Each is
reproduced alone (`--single-item`): a `dvc repro` that walks upstream takes a write lock on every
upstream stage's outputs, even unchanged ones, and collides with the other backbone reading them.
So the stages every backbone shares run first, once; the ones that gather the backbones (stack,
evaluate, register) last. `--wait-for-lock` makes each wait its turn, not fail, while another
records its stage in dvc.lock.

The params fix each stage's threads (`train.threads`, `score.threads`): a stage computes the same
bits whether it runs alone or beside another, so `dvc repro` alone reproduces what this does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tokenfocus.config import Params

# every backbone's chain depends on these (validate, split, build@*, pretrain@* upstream of them)
SHARED_FIRST = ("split", "pretrain")
CHAIN = ("train", "score")  # each backbone's stages, in order: `<name>@<slug>`
STAGE_LINE = re.compile(r"Running stage '([^']+)'")
TIMING = Path("eval/pipeline_timing.json")


@dataclass
class Lane:
    """One lane's `dvc` commands, run in turn: the return code of the last one run, and each stage
    they ran, with its wall time."""

    name: str
    rc: int = 0
    stages: list[dict] = field(default_factory=list)


def dvc_executable() -> str:
    """The `dvc` beside this Python (the project's venv, whose packages it runs with), else the
    one on PATH. Everything in the project that runs `dvc` as a command takes it from here."""
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


def run_lane(name: str, commands: list[list[str]], out_lock: threading.Lock, prefix: str = "") -> Lane:
    """Run ``dvc`` with each of ``commands``' arguments in turn, up to the first that fails,
    streaming the output (each line after ``prefix``) and timing each stage run from one "Running
    stage" line to the next."""
    lane = Lane(name)
    for args in commands:
        proc = subprocess.Popen(
            [dvc_executable(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        current, t0 = None, time.perf_counter()
        for line in proc.stdout:
            with out_lock:
                sys.stdout.write(prefix + line)
                sys.stdout.flush()
            m = STAGE_LINE.match(line)
            if m:
                now = time.perf_counter()
                if current:
                    lane.stages.append({"stage": current, "lane": name, "seconds": round(now - t0, 1)})
                current, t0 = m.group(1), now
        lane.rc = proc.wait()
        if current:
            lane.stages.append(
                {"stage": current, "lane": name, "seconds": round(time.perf_counter() - t0, 1)}
            )
        if lane.rc:
            break
    return lane


def side_by_side_jobs(
    params: Params, backbones: int, cores: int | None = None, accelerated: bool | None = None
) -> int:
    """How many backbones' chains run at once.

    On the CPU, as many as the cores hold at the params' threads (a backbone's torchrun ranks
    each count), at least one and at most one per backbone. Where a backbone runs on an
    accelerator, one at a time: two fine-tunings of 1-8 B checkpoints do not share one GPU's
    memory (the retrain flow's Dask placement is what spreads backbones over GPUs).

    Args:
        params: the loaded params.yaml.
        backbones: how many backbones the pipeline trains.
        cores: this machine's cores (default: all of them).
        accelerated: whether a backbone runs on an accelerator (default: resolved from each
            backbone's ``device``).
    """
    if accelerated is None:
        from tokenfocus.backbones import resolve_device

        accelerated = any(resolve_device(bb.device).type != "cpu" for bb in params.backbones.values())
    if accelerated:
        return 1
    ranks = max((bb.nproc for bb in params.backbones.values()), default=1)
    per_backbone = max(params.train.threads, params.score.threads, 1) * ranks
    return max(1, min(backbones, (cores or os.cpu_count() or 1) // per_backbone))


def reproduce(params: Params, *, jobs: int | None = None, timing: Path | None = TIMING) -> int:
    """Reproduce the whole pipeline, the backbones' stages ``jobs`` at a time.

    Args:
        params: the loaded params.yaml (its backbones and threads).
        jobs: backbones' chains at a time; None: :func:`side_by_side_jobs`. 1: one after another.
        timing: where each stage's wall time is written (None: nowhere).

    Returns:
        0, or the return code of the first `dvc` command that failed. Nothing after a failed
        phase runs, so no ensemble is fitted on a backbone whose stages failed.
    """
    slugs = list(params.backbones)
    jobs = jobs or side_by_side_jobs(params, len(slugs))
    out_lock = threading.Lock()
    start = time.perf_counter()
    lanes = [run_lane("shared", [["repro", *SHARED_FIRST]], out_lock)]
    if lanes[-1].rc == 0:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            chains = [
                pool.submit(
                    run_lane,
                    slug,
                    [["--wait-for-lock", "repro", "--single-item", f"{stage}@{slug}"] for stage in CHAIN],
                    out_lock,
                    f"[{slug}] ",
                )
                for slug in slugs
            ]
            lanes += [c.result() for c in chains]
    if all(lane.rc == 0 for lane in lanes):
        lanes.append(run_lane("gather", [["repro"]], out_lock))
    total = time.perf_counter() - start
    failed = next((lane for lane in lanes if lane.rc), None)
    if failed:
        print(f"dvc repro failed in {failed.name} (exit {failed.rc}); later stages not run", file=sys.stderr)
        return failed.rc
    stages = [s for lane in lanes for s in lane.stages]
    if timing is not None and stages:
        timing.parent.mkdir(parents=True, exist_ok=True)
        timing.write_text(json.dumps({"total_s": round(total, 1), "jobs": jobs, "stages": stages}, indent=1))
    print(f"dvc repro: {total:.0f} s ({jobs} backbone(s) at a time)")
    return 0
