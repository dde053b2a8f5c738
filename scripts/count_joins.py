"""Other joins of a counting element's answer and its parts' reading, stacked as the pipeline
stacks (issue 23; docs/styles.md, "Other readings of the parts").

The shipped P(yes) of a counting element is the mean of its answer (with the mirrored image's)
and the parts' reading r (:func:`tokenfocus.scoring.counting.counted_probability`). This script
reads every counting element's parts again, through the scorer's own grounding (``score.grounding``)
with the pipeline's models, for every split the stack is fitted on and measured on, and rebuilds
each table's P(yes) as that mean with f(r) in place of r. Then it fits the ensemble as the stack
stage does and prints NTIRE per set. The ``shipped`` row (f(r) = r) must equal docs/results.md's
ridge stack. The views' readings are kept in ``work/count_joins/`` (a rerun reads them from there).
Needs the pipeline's models and scores (`make run`); about 10 minutes on 2 cores.

    .venv/bin/python scripts/count_joins.py
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()

import numpy as np  # noqa: E402

from tokenfocus.config import GroundingConfig, load_params  # noqa: E402
from tokenfocus.ensemble_stages import fit_stack  # noqa: E402
from tokenfocus.plots import category_accuracy  # noqa: E402
from tokenfocus.predictions import (  # noqa: E402
    STYLED_VAL,
    image_root,
    metrics_of,
    read_table,
    split_records,
    test_variants,
)
from tokenfocus.scoring.counting import parse_count  # noqa: E402
from tokenfocus.scoring.grounding import ground  # noqa: E402

JOINS = {
    "shipped": lambda r: r,
    "the reading's square root": np.sqrt,
    "the reading squared": np.square,
    "the reading cubed": lambda r: r**3,
}


def readings(params, slug: str, split: str) -> dict[str, dict[str, float]]:
    """img_path -> key -> the parts' reading of each counting element of a split's pairs, read by
    the scorer's own :func:`~tokenfocus.scoring.grounding.ground`: asked as 0, an element's
    P(yes) comes back as half its reading."""
    cache = ROOT / "work" / "count_joins" / slug / f"{split}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from tokenfocus.images import load_images
    from tokenfocus.scoring import Scorer

    cfg = params.score.grounding
    scorer = Scorer.load(
        ROOT / params.train.out / slug / "model",
        grounding=GroundingConfig(enabled=False),
        threads=params.score.threads,
    )
    records, root, out = split_records(params, split), image_root(params, split), {}
    for start in range(0, len(records), params.score.chunk):  # a chunk's images decoded at a time
        recs = records[start : start + params.score.chunk]
        images = load_images(root, [r.img_path for r in recs])
        keys = [list(r.element_score) for r in recs]
        # only the counting elements are in probs: ground() reads those and leaves the rest
        probs = [
            {k: 0.0 for k in ks if parse_count(k, r.prompt, ks, cfg)}
            for r, ks in zip(recs, keys, strict=True)
        ]
        ground(
            scorer.elements_prefix,
            [images[r.img_path] for r in recs],
            [r.prompt for r in recs],
            keys,
            probs,
            cfg,
        )
        out.update(
            {
                r.img_path: {k: 2 * p for k, p in got.items()}
                for r, got in zip(recs, probs, strict=True)
                if got
            }
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out))
    return out


def main() -> None:
    params = load_params(ROOT / "params.yaml")
    slugs = list(params.backbones)
    fit_splits = ["val", *(f"{STYLED_VAL}{k}" for k in range(params.stack.fit_styled))]
    sets = ["test", *test_variants(params)]
    tables = {
        sp: {s: read_table(ROOT / params.score.out / s / f"{sp}.json") for s in slugs}
        for sp in fit_splits + sets
    }
    read = {sp: {s: readings(params, s, sp) for s in slugs} for sp in tables}
    print("| join | " + " | ".join(sets) + " | counting: " + " / ".join(sets[:2]) + " |")
    for name, f in JOINS.items():
        joined = copy.deepcopy(tables)
        for sp, by_slug in joined.items():
            for s, rows in by_slug.items():
                for row in rows:
                    for k, r in read[sp][s].get(row["img_path"], {}).items():
                        if k in row["elements"]:  # the mean of the answer and r, with f(r) for r
                            row["elements"][k] += (float(f(r)) - r) / 2
        ens = fit_stack(params, joined["val"], styled={sp: joined[sp] for sp in fit_splits[1:]})
        combined = {sp: ens.combine(joined[sp]) for sp in sets}
        ntire = " | ".join(f"{metrics_of(combined[sp])['final']:.4f}" for sp in sets)
        counting = " / ".join(f"{category_accuracy(combined[sp])['counting']:.3f}" for sp in sets[:2])
        print(f"| {name} | {ntire} | {counting} |", flush=True)


if __name__ == "__main__":
    main()
