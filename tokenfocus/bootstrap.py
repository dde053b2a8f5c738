"""A paired bootstrap of two prediction tables' NTIRE scores, prompts resampled: how the stack
is compared with the best single backbone, and a challenger with the champion."""

from __future__ import annotations

import numpy as np

from tokenfocus.predictions import metrics_of


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def paired_bootstrap(a_rows: list[dict], b_rows: list[dict], *, n: int, seed: int) -> dict[str, float]:
    """NTIRE score of two prediction tables on the same pairs, and a bootstrap CI of b - a.

    Prompts are resampled, not pairs: the images of one prompt (about 10 in EvalMuse) are not
    independent, and resampling them one by one makes the interval too narrow. A row without a
    ``prompt_id`` stands for itself.
    """
    if [r.get("img_path") for r in a_rows] != [r.get("img_path") for r in b_rows]:
        raise ValueError("paired_bootstrap: the two tables do not hold the same pairs in the same order")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(a_rows):
        groups.setdefault(r.get("prompt_id") or f"#row{i}", []).append(i)
    members = list(groups.values())
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = [i for g in rng.integers(0, len(members), len(members)) for i in members[g]]
        ma, mb = metrics_of([a_rows[i] for i in idx]), metrics_of([b_rows[i] for i in idx])
        diffs.append(_num(mb.get("final")) - _num(ma.get("final")))
    a, b = _num(metrics_of(a_rows).get("final")), _num(metrics_of(b_rows).get("final"))
    lo, hi = np.nanpercentile(diffs, [2.5, 97.5]) if not np.all(np.isnan(diffs)) else (np.nan, np.nan)
    return {
        "champion_final": a,
        "challenger_final": b,
        "diff": b - a,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "prompts": len(members),
    }
