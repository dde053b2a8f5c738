"""Which pair features should the ridge stacker read? (issue 23; docs/styles.md, "Pair features
from the combined elements")

Refits the ensemble on the pipeline's fit rows (val and its redrawings, ``stack.fit_styled``)
with each feature set below and prints SRCC / NTIRE on the test split and on each of its
redrawings (the held-out family, short keys, the check families). The element stacker is the
pipeline's; only the ridge's columns change. The row marked ``shipped`` must equal
docs/results.md's ridge stack. ``--crossed`` also refits the ridge on combined elements from
element stackers fitted without the row's prompt (5 folds): does the ridge lean on the element
stacker's own fit? Needs the pipeline's scores (`make run`).

    .venv/bin/python scripts/stack_features.py [--crossed]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.ensemble_stages import fit_rows  # noqa: E402
from tokenfocus.predictions import metrics_of, read_table, test_variants  # noqa: E402
from tokenfocus.stack import fit_ensemble  # noqa: E402

CATEGORIES = ["object", "counting", "color", "attribute", "spatial"]
MEANS = [f"category:{c}" for c in CATEGORIES]
SHARES = [f"share:{c}" for c in CATEGORIES]
#: name -> (per-backbone features, features of the combined elements)
SETS = {
    "per backbone: score, entropy, element mean, category means (before)": (
        ["score", "entropy", "element_mean", *MEANS],
        [],
    ),
    "combined: category means": ([], MEANS),
    "combined: category means + shares": ([], MEANS + SHARES),
    "per backbone: score; combined: category means + shares (shipped)": (["score"], MEANS + SHARES),
    "per backbone: score, entropy; combined: category means + shares": (["score", "entropy"], MEANS + SHARES),
    "per backbone: all of before; combined: category means + shares": (
        ["score", "entropy", "element_mean", *MEANS],
        MEANS + SHARES,
    ),
}


def crossed_fit(fit: dict[str, list[dict]], cfg) -> object:
    """The ensemble whose ridge reads, on each fit row, elements combined by an element stacker
    fitted on the other folds (grouped by prompt)."""
    from sklearn.model_selection import GroupKFold

    ens = fit_ensemble(fit, cfg)
    slugs = ens.slugs
    n = len(fit[slugs[0]])
    elements: list = [None] * n
    groups = [r["prompt_id"] for r in fit[slugs[0]]]
    for part, held in GroupKFold(5).split(np.zeros(n), groups=groups):
        other = fit_ensemble({s: [fit[s][i] for i in part] for s in slugs}, cfg)
        for i, e in zip(
            held, other.stacked_elements({s: [fit[s][i] for i in held] for s in slugs}), strict=True
        ):
            elements[i] = e
    y = np.array([r["gt_score"] for r in fit[slugs[0]]], dtype=float)
    ens.stacker.fit(ens.design(fit, elements), y)
    return ens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crossed", action="store_true", help="also the ridge on cross-fitted elements")
    args = ap.parse_args()
    params = load_params()
    root, slugs = Path(params.score.out), sorted(params.backbones)
    splits = ["test"] + [v for v in test_variants(params) if (root / slugs[0] / f"{v}.json").exists()]
    tables = {sp: {s: read_table(root / s / f"{sp}.json") for s in slugs} for sp in splits}
    fit = fit_rows(params, {s: read_table(root / s / "val.json") for s in slugs})
    print("| features | " + " | ".join(f"{sp} SRCC / NTIRE" for sp in splits) + " |")
    print("|---|" + "---|" * len(splits))
    for name, (features, element_features) in SETS.items():
        cfg = dataclasses.replace(params.stack, features=features, element_features=element_features)
        fits = [("", fit_ensemble(fit, cfg))] + (
            [(" (crossed)", crossed_fit(fit, cfg))] if args.crossed else []
        )
        for tag, ens in fits:
            cells = []
            for sp in splits:
                m = metrics_of(ens.combine(tables[sp]))
                cells.append(f"{m['srcc']:.4f} / {m['final']:.4f}")
            print(f"| {name}{tag} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
