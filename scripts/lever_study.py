"""A lever over training seeds: the stack with and without it, per set, and the rule that keeps it.

Each run names, per backbone, the folder of score tables a `tokenfocus score` wrote (a backbone
left out reads the pipeline's own, `score.out`). Each run's tables are stacked as the pipeline
stacks them (fitted on val and its redrawings, measured on test and every family), and the
study prints, per seed, the stack's NTIRE without -> with the lever in each set, then each set's
mean change, its standard error over the seeds, the cells up / down / level, and the verdict of
the rule docs/styles.md decides by: keep while the test split's mean change is not below zero and
no set's mean change is below ``--floor``.

Usage: python scripts/lever_study.py SPEC.json [--floor 0.002], in the repository root (params.yaml
and data/). SPEC: ``{"runs": [{"seed": 3, "without": {"fastvlm_gemma": "DIR"}, "with": {...}}]}``;
a side may instead give the stack's figures a run recorded, ``{"ntire": {"test": 0.8798, ...}}``,
where its tables are gone, or be a list of such sides, whose figures are averaged: the same seed
over fine-tuning's redrawings drawn again (``tokenfocus synth`` with ``styles.augment`` reordered draws
the same styles as often, other pixels), since a lever that redraws them moves every figure by
that redrawing's own noise too (docs/styles.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tokenfocus.env import apply_env

apply_env()  # before the stack's BLAS loads: the ridge fit's bits
from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.ensemble_stages import fit_stack  # noqa: E402
from tokenfocus.predictions import STYLED_VAL, metrics_of, read_table, test_variants  # noqa: E402


def stack_ntire(params, folders: dict[str, str]) -> dict[str, float]:
    """The stack's NTIRE in every measured set, fitted as the pipeline fits it on these tables."""
    slugs = list(params.backbones)
    where = {s: Path(folders.get(s, Path(params.score.out) / s)) for s in slugs}
    fit = ["val", *(f"{STYLED_VAL}{k}" for k in range(params.stack.fit_styled))]
    sets = ["test", *test_variants(params)]
    tables = {sp: {s: read_table(where[s] / f"{sp}.json") for s in slugs} for sp in fit + sets}
    ens = fit_stack(params, tables["val"], styled={sp: tables[sp] for sp in fit[1:]})
    return {sp: round(metrics_of(ens.combine(tables[sp]))["final"], 4) for sp in sets}


def side_ntire(params, side) -> dict[str, float]:
    """One side of a run: the stack's NTIRE per set, from its tables, as recorded, or averaged over
    a list of such sides (the same seed over several redrawings)."""
    if isinstance(side, list):
        each = [side_ntire(params, s) for s in side]
        return {sp: round(statistics.fmean(e[sp] for e in each), 4) for sp in each[0]}
    return side["ntire"] if "ntire" in side else stack_ntire(params, side)


def summary(rows: list[tuple[dict[str, float], dict[str, float]]], floor: float = 0.002) -> dict:
    """Per set: the mean change (with - without) over the seeds, its standard error (None for one
    seed), and the cells up / down / level; and whether the rule keeps the lever (test's mean >= 0, every set's >= -floor).

    Args:
        rows: per seed, (the stack's NTIRE per set without the lever, with it).
        floor: how far below zero a set's mean change may fall.
    """
    sets = list(rows[0][0])
    out: dict = {"sets": {}}
    for sp in sets:
        d = [round(w[sp] - wo[sp], 4) for wo, w in rows]
        # one seed has no spread: null, not NaN, which JSON does not allow
        se = round(statistics.stdev(d) / len(d) ** 0.5, 4) if len(d) > 1 else None
        out["sets"][sp] = {
            "changes": d,
            "mean": round(statistics.fmean(d), 4),
            "se": se,
            "up": sum(x > 0 for x in d),
            "down": sum(x < 0 for x in d),
            "level": sum(x == 0 for x in d),
        }
    means = {sp: v["mean"] for sp, v in out["sets"].items()}
    out["keep"] = means["test"] >= 0 and min(means.values()) >= -floor
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("--floor", type=float, default=0.002)
    args = ap.parse_args()
    params = load_params("params.yaml")
    runs = json.loads(args.spec.read_text())["runs"]
    rows = [(side_ntire(params, r["without"]), side_ntire(params, r["with"])) for r in runs]
    for r, (wo, w) in zip(runs, rows, strict=True):
        print(f"| {r['seed']} | " + " | ".join(f"{wo[sp]:.4f} -> {w[sp]:.4f}" for sp in wo) + " |")
    print(json.dumps(summary(rows, args.floor), indent=1))


if __name__ == "__main__":
    main()
