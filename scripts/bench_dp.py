"""`make bench` (data-parallel part): training samples/s of one backbone in 1 and 2 torchrun
processes on this machine's CPU, and what `backbones plan` predicts per GPU for 1, 2, 4 and 8 ranks
of the 8-GPU recipe (docs/gpu/params-gpu-8.yaml). Writes docs/dp-bench.md, which bench.py appends.

On a 2-core machine two ranks share the two cores (1 torch thread each), so the CPU rows mostly
show what the data-parallel machinery costs (sharding, one all-reduce per step), not a speed-up:
a real speed-up needs a device per rank.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenfocus.env import apply_env  # noqa: E402

apply_env()

import yaml  # noqa: E402

from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.plan import load_config, plan  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import table  # noqa: E402  (the one markdown table of make bench)

SLUG, STEPS, BATCH = "fastvlm_gemma", 30, 16


def train_rate(nproc: int, work: Path) -> dict:
    """Samples/s of ``STEPS`` steps of the shipped Gemma base (LoRA) in ``nproc`` ranks."""
    p = load_params()
    bb = dataclasses.replace(p.backbone(SLUG), nproc=nproc, steps=None)  # STEPS, not its own count
    p = dataclasses.replace(
        p,
        backbones={SLUG: bb},
        train=dataclasses.replace(
            p.train,
            steps=STEPS,
            batch_size=BATCH,
            eval_every=10_000,  # no val pass inside the timing: only the last step evaluates
            checkpoint_every=10_000,
            threads=max(1, 2 // nproc),
            out=str(work / f"dp{nproc}"),
        ),
    )
    path = work / f"params-{nproc}.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(p), sort_keys=False))
    t = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "tokenfocus", "train", "-b", SLUG, "--params", str(path), "--no-track"],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    if run.returncode:
        raise SystemExit(f"{nproc} ranks failed:\n{run.stderr[-3000:]}")
    return {
        "processes": nproc,
        "torch_threads_each": max(1, 2 // nproc),
        "global_batch": BATCH,
        "steps": STEPS,
        "wall_s": round(wall, 1),
        "samples_per_s": round(STEPS * BATCH / wall, 2),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cpu = [train_rate(n, Path(tmp)) for n in (1, 2)]
    recipe = load_params("docs/gpu/params-gpu-8.yaml")
    bb = recipe.backbone("qwen2_5_vl_7b")
    cfg = load_config(bb.source, "docs/gpu/configs/Qwen2.5-VL-7B-Instruct/config.json")
    gpu = []
    for n in (1, 2, 4, 8):
        m = plan(cfg, bb, recipe.train, nproc=n)
        gpu.append(
            {
                "gpus": n,
                "examples_per_gpu": -(-recipe.train.batch_size // n),
                "weights_gib": round(m.weights_gib, 2),
                "activations_gib": round(m.activations_gib, 2),
                "allreduce_gib": round(m.allreduce_gib, 3),
                "train_gib_per_gpu": round(m.train_gib, 1),
            }
        )
    text = (
        "## Data-parallel fine-tuning of one backbone (torchrun, `backbones.<slug>.nproc`)\n\n"
        f"Training wall time of {STEPS} steps of the shipped Gemma base (LoRA), global batch {BATCH}, "
        "one process against two torchrun ranks (gloo) on this machine's 2 CPU cores, each rank with "
        "half the batch and one torch thread. Includes start-up (model load, a final val pass).\n\n"
        + table(cpu)
        + "\nWhat `tokenfocus backbones plan --nproc N` predicts per GPU for the 8-GPU recipe "
        "(Qwen2.5-VL-7B-Instruct, bf16, LoRA, gradient checkpointing, global batch "
        f"{recipe.train.batch_size}): every rank holds the whole model; activations shrink with the "
        "per-GPU batch; the all-reduce bucket comes on top.\n\n" + table(gpu)
    )
    Path("docs/dp-bench.md").write_text(text)
    Path("eval").mkdir(exist_ok=True)
    Path("eval/dp_bench.json").write_text(json.dumps({"cpu": cpu, "gpu_plan": gpu}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
