"""Where a drawing no model saw costs the stack its NTIRE (issue 23; docs/styles.md, "Where the
held-out gap is lost").

The held-out and check families redraw the test split's pairs: the same prompts, elements and
labels, other pixels. So each of their tables can borrow, row by row, a part of the test table's
answers for the same pair: the overall scores, every element's P(yes), or one category's. The
pipeline's own ensemble (``stack.out``, as `tokenfocus stack` fitted it) then scores each family
as drawn and with each borrowed part: what a part recovers is what the unseen drawing costs
through it.

    .venv/bin/python scripts/gap_decomposition.py   # after `make run`; a few seconds
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()

from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.evalmuse import parse_element_key  # noqa: E402
from tokenfocus.predictions import (  # noqa: E402
    CHECK,
    HELDOUT,
    metrics_of,
    read_table,
    test_variants,
)
from tokenfocus.stack import Ensemble  # noqa: E402


def borrow(
    drawn: dict[str, list[dict]], test: dict[str, list[dict]], part: str, category: str | None = None
) -> dict[str, list[dict]]:
    """A copy of a family's tables (backbone -> rows) with one part of each row taken from the
    test table's row of the same pair: ``"scores"`` (the overall distribution and its score) or
    ``"elements"`` (every element's P(yes), or ``category``'s alone).

    Raises:
        ValueError: the tables do not hold the same pairs in the same order.
    """
    out = copy.deepcopy(drawn)
    for slug, rows in out.items():
        if [r["img_path"] for r in rows] != [r["img_path"] for r in test[slug]]:
            raise ValueError(f"{slug}: the family's table and the test table hold other pairs")
        for row, ref in zip(rows, test[slug], strict=True):
            if part == "scores":
                row["score"], row["distribution"] = ref["score"], ref["distribution"]
                continue
            for key in row["elements"]:
                if category is None or parse_element_key(key).category == category:
                    row["elements"][key] = ref["elements"][key]
    return out


def main() -> None:
    params = load_params(ROOT / "params.yaml")
    slugs = list(params.backbones)

    def tables(split: str) -> dict[str, list[dict]]:
        return {s: read_table(ROOT / params.score.out / s / f"{split}.json") for s in slugs}

    ens = Ensemble.load(ROOT / params.stack.out)
    test = tables("test")
    categories = sorted({parse_element_key(k).category for r in test[slugs[0]] for k in r["elements"]})
    families = [v for v in test_variants(params) if v == HELDOUT or v.startswith(CHECK)]
    ntire = lambda t: metrics_of(ens.combine(t))["final"]  # noqa: E731
    print(f"test: {ntire(test):.4f}")
    print("| family | as drawn | test's scores | test's elements | " + " | ".join(categories) + " |")
    print("|---" * (4 + len(categories)) + "|")
    for fam in families:
        drawn = tables(fam)
        cells = [ntire(drawn), ntire(borrow(drawn, test, "scores")), ntire(borrow(drawn, test, "elements"))]
        cells += [ntire(borrow(drawn, test, "elements", c)) for c in categories]
        print(f"| {fam} | " + " | ".join(f"{x:.4f}" for x in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
