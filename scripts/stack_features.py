"""Does the stacker get more from the predictions it has? (issue 23, measured, not shipped)

The ridge stack as the pipeline fits it (per backbone: score, entropy, element mean, mean P(yes)
per category; StandardScaler + RidgeCV on val), then the same with extra pair features read from
the *stacked* element probabilities (the logistic element stacker's): their mean, minimum, share
below 0.5, mean log-odds, and mean per category. On val those come from element stackers fitted
on the other folds (grouped by prompt), so the ridge never sees an element stacker's own fit.
Prints test and held-out-family SRCC and NTIRE per feature set; the first row must equal
docs/results.md's ridge stack. Needs the pipeline's scores (`make run`).

    .venv/bin/python scripts/stack_features.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sklearn.linear_model import RidgeCV  # noqa: E402
from sklearn.model_selection import GroupKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.evalmuse import parse_element_key  # noqa: E402
from tokenfocus.predictions import HELDOUT, metrics_of, read_table  # noqa: E402
from tokenfocus.stack import design, fit_ensemble  # noqa: E402

EXTRA = ["", "mean", "min", "below", "logit", "category", "mean+category", "mean+min+below+logit+category"]


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def stacked(fit_on: dict[str, list[dict]], tables: dict[str, list[dict]], params) -> list[dict[str, float]]:
    """Each pair's element probabilities from the pipeline's element stacker fitted on ``fit_on``."""
    return [r["elements"] for r in fit_ensemble(fit_on, params.stack).combine(tables, "mean")]


def pair_features(probs: list[dict[str, float]], kinds: str, categories: list[str]) -> np.ndarray:
    rows = []
    for p in probs:
        v, f = np.array(list(p.values())), []
        f += [v.mean()] if "mean" in kinds else []
        f += [v.min()] if "min" in kinds else []
        f += [(v < 0.5).mean()] if "below" in kinds else []
        f += [logit(v).mean()] if "logit" in kinds else []
        if "category" in kinds:
            for c in categories:
                own = [x for k, x in p.items() if parse_element_key(k).category == c]
                f.append(np.mean(own) if own else v.mean())
        rows.append(f)
    return np.array(rows)


def main() -> None:
    params = load_params()
    root, slugs = Path(params.score.out), sorted(params.backbones)
    tables = {sp: {s: read_table(root / s / f"{sp}.json") for s in slugs} for sp in ("val", "test", HELDOUT)}
    features = list(params.stack.features)
    categories = [f.removeprefix("category:") for f in features if f.startswith("category:")]
    val = tables["val"]
    y = np.array([r["gt_score"] for r in val[slugs[0]]], dtype=float)
    n = len(y)
    crossed: list = [None] * n  # val's stacked elements, each from the folds without its prompt
    groups = [r["prompt_id"] for r in val[slugs[0]]]
    for fit, held in GroupKFold(5).split(np.zeros(n), groups=groups):
        part = {s: [val[s][i] for i in fit] for s in slugs}
        for i, p in zip(
            held, stacked(part, {s: [val[s][i] for i in held] for s in slugs}, params), strict=True
        ):
            crossed[i] = p
    probs = {sp: stacked(val, tables[sp], params) for sp in ("test", HELDOUT)}
    print(
        "| extra features | test SRCC | test NTIRE | held-out SRCC | held-out NTIRE |\n|---|---|---|---|---|"
    )
    for kinds in EXTRA:
        x = design(val, features)
        if kinds:
            x = np.hstack([x, pair_features(crossed, kinds, categories)])
        ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=params.stack.alphas)).fit(x, y)
        cells = []
        for sp in ("test", HELDOUT):
            t = tables[sp]
            xt = design(t, features)
            if kinds:
                xt = np.hstack([xt, pair_features(probs[sp], kinds, categories)])
            rows = [
                {**r, "score": float(s), "elements": p}
                for r, s, p in zip(t[slugs[0]], ridge.predict(xt), probs[sp], strict=True)
            ]
            m = metrics_of(rows)
            cells += [f"{m['srcc']:.4f}", f"{m['final']:.4f}"]
        print(f"| {kinds or 'none (shipped)'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
