"""Random lighting in fine-tuning, with and without (issue 23, section 3): one backbone trained
twice from the same shipped base, params otherwise as in params.yaml, each scored on the test
split and on the same prompts drawn in the held-out style family.

    .venv/bin/python scripts/augment_study.py [--backbone fastvlm_gemma] [--strengths 0 0.2]

Writes eval/augment_study.json and prints a markdown table (docs/results.md quotes it by hand:
it is a study, not a pipeline stage). Needs `dvc repro split` (the splits) and the shipped bases.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()

from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.plots import category_accuracy  # noqa: E402
from tokenfocus.predictions import HELDOUT, read_table, score_backbone  # noqa: E402
from tokenfocus.train import Trainer  # noqa: E402


def run(slug: str, strength: float, work: Path) -> dict:
    p = load_params()
    p = dataclasses.replace(
        p,
        train=dataclasses.replace(p.train, augment_lighting=strength, out=str(work / f"light{strength}")),
        score=dataclasses.replace(p.score, out=str(work / f"scores{strength}")),
    )
    summary = Trainer(slug, p).run()
    metrics = score_backbone(slug, p, splits=("test", HELDOUT), model_dir=Path(p.train.out) / slug / "model")
    held = read_table(Path(p.score.out) / slug / f"{HELDOUT}.json")
    return {
        "augment_lighting": strength,
        "steps": summary["steps"],
        "best_val_srcc": round(summary["best_val_srcc"], 4),
        "test": metrics["test"],
        "heldout_style": metrics[HELDOUT],
        "heldout_category_accuracy": category_accuracy(held),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="fastvlm_gemma")
    ap.add_argument("--strengths", nargs="*", type=float, default=[0.0, 0.2])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(a.backbone, s, Path(tmp)) for s in a.strengths]
    Path("eval").mkdir(exist_ok=True)
    Path("eval/augment_study.json").write_text(json.dumps({"backbone": a.backbone, "runs": rows}, indent=1))
    print(
        "| augment_lighting | steps | val SRCC | test SRCC | test NTIRE | held-out SRCC | held-out NTIRE | held-out object acc |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, h = r["test"], r["heldout_style"]
        print(
            f"| {r['augment_lighting']} | {r['steps']} | {r['best_val_srcc']:.4f} | {t['srcc']:.4f} | {t['final']:.4f} | "
            f"{h['srcc']:.4f} | {h['final']:.4f} | {r['heldout_category_accuracy'].get('object', float('nan')):.3f} |"
        )


if __name__ == "__main__":
    main()
