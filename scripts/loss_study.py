"""Focus vs LM loss at equal budget, over several seeds: eval/loss_study.json (shown in results.md).

Usage: python scripts/loss_study.py [--backbone idefics3_tiny] [--seeds 3] [--steps N]
Each run trains from the same base with the default params except the loss and the seed, and is
scored on the test split. Runs go to models/loss_study/ (not the pipeline's folders).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.env import apply_offline_env  # noqa: E402
from tokenfocus.predictions import score_backbone  # noqa: E402
from tokenfocus.train import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", action="append")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--losses", nargs="+", default=["focus", "lm"])
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--append", action="store_true", help="add to eval/loss_study.json's runs")
    args = ap.parse_args()
    apply_offline_env()
    params = load_params()
    study = Path("eval/loss_study.json")
    runs = json.loads(study.read_text())["runs"] if args.append and study.exists() else []
    for slug in args.backbone or [next(iter(params.backbones))]:
        for loss in args.losses:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                train = dataclasses.replace(
                    params.train, loss=loss, seed=seed, steps=args.steps or params.train.steps
                )
                p = dataclasses.replace(params, train=train)
                out = Path("models/loss_study") / f"{slug}-{loss}-{seed}"
                summary = Trainer(slug, p, out=out).run()
                metrics = score_backbone(
                    slug, p, splits=("test",), model_dir=out / "model", out=out / "scores"
                )
                runs.append(
                    {
                        "backbone": slug,
                        "loss": loss,
                        "seed": seed,
                        "cpu_minutes": summary["cpu_minutes"],
                        "steps": summary["steps"],
                        "test": metrics["test"],
                    }
                )
                print(json.dumps(runs[-1]), flush=True)
                write(runs, params, args)  # after every run: a killed study keeps what it measured
    write(runs, params, args)


def write(runs: list[dict], params, args) -> None:
    """eval/loss_study.json: the runs and, per backbone and loss, their mean and spread."""
    study = Path("eval/loss_study.json")
    summary = []
    for slug in sorted({r["backbone"] for r in runs}):
        for loss in ("focus", "lm"):
            rs = [r for r in runs if r["backbone"] == slug and r["loss"] == loss]
            if not rs:
                continue
            srcc = [r["test"]["srcc"] or 0.0 for r in rs]
            summary.append(
                {
                    "backbone": slug,
                    "loss": loss,
                    "n": len(rs),
                    "srcc_mean": statistics.mean(srcc),
                    "srcc_sd": statistics.stdev(srcc) if len(srcc) > 1 else 0.0,
                    "acc_mean": statistics.mean(r["test"]["element_acc"] for r in rs),
                    "final_mean": statistics.mean(r["test"]["final"] or 0.0 for r in rs),
                }
            )
    note = f"Budget: {params.train.steps if not args.steps else args.steps} steps of batch {params.train.batch_size} per run."
    Path("eval").mkdir(exist_ok=True)
    study.write_text(json.dumps({"runs": runs, "summary": summary, "note": note}, indent=1))


if __name__ == "__main__":
    main()
