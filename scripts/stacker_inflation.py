"""How much does fitting the stacker on the val rows that also chose each backbone's checkpoint
inflate val against test? (issue 24; after `make run`)

Three estimates of the ridge stack's NTIRE score, from the pipeline's own prediction tables:
- in-sample val: the stacker fitted on val, scored on val (what a val-based choice sees);
- cross-fitted val: two halves of the val prompts, each scored by a stacker fitted on the other
  half (rows that played no part in fitting the stacker; the checkpoints were still chosen on them);
- test: the stacker fitted on val, scored on test (what the pipeline reports).
Each single backbone's val and test figures show the checkpoint-selection part on its own.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()
from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.predictions import metrics_of, read_table  # noqa: E402
from tokenfocus.stack import fit_ensemble  # noqa: E402


def main() -> None:
    p = load_params()
    slugs = list(p.backbones)
    tables = {
        split: {s: read_table(Path(p.score.out) / s / f"{split}.json") for s in slugs}
        for split in ("val", "test")
    }
    ens = fit_ensemble(tables["val"], p.stack)
    rows = {}
    for s in slugs:
        rows[s] = {
            "val": metrics_of(tables["val"][s])["final"],
            "test": metrics_of(tables["test"][s])["final"],
        }
    half = {
        r["prompt_id"]: int(hashlib.sha256(r["prompt_id"].encode()).hexdigest(), 16) % 2
        for r in tables["val"][slugs[0]]
    }
    crossed = []
    for k in (0, 1):
        fit = {s: [r for r in t if half[r["prompt_id"]] != k] for s, t in tables["val"].items()}
        held = {s: [r for r in t if half[r["prompt_id"]] == k] for s, t in tables["val"].items()}
        crossed += fit_ensemble(fit, p.stack).combine(held)
    rows["ridge stack"] = {
        "val": metrics_of(ens.combine(tables["val"]))["final"],
        "val_crossfit": metrics_of(crossed)["final"],
        "test": metrics_of(ens.combine(tables["test"]))["final"],
    }
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
