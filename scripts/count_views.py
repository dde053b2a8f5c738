"""Which parts of the image read a count best? (issue 23, section 4: the measurement behind
``score.grounding.count_views``)

Per compositional counting element of a split (``three circles (counting)``), the counted object
and one to four of it are asked on every view below, once; the element's own question is asked
on the whole image. Each split of the image (its parts' count distributions convolved, as
:func:`tokenfocus.scoring.counting.counted_probability` does) then reads the claimed count, and
P(yes) is the mean of the answer and that reading. It prints the accuracy at 0.5 and the AUC per
combination of splits:

- ``cuts``: at a third and at two thirds, across and down, each cut's two parts (shipped before);
- ``bands``: three bands between the thirds, across and down;
- ``halves``: the two halves, across and down;
- ``cells``: the 2 x 2 cells.

docs/styles.md, "Counts read from bands and cells".

    .venv/bin/python scripts/count_views.py --backbone fastvlm_gemma [--split val] \
        [--images data/heldout_style/images]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()

from tokenfocus.config import GroundingConfig  # noqa: E402
from tokenfocus.evalmuse import parse_element_key  # noqa: E402
from tokenfocus.scoring.counting import count_keys, counted_probability, parse_count  # noqa: E402

T, TT = 0.333, 0.667
#: a view is the box it keeps, (x from, x to), (y from, y to), as fractions of the sides
SPLITS = {
    "cuts": [[((0, c), (0, 1)), ((c, 1), (0, 1))] for c in (T, TT)]
    + [[((0, 1), (0, c)), ((0, 1), (c, 1))] for c in (T, TT)],
    "bands": [
        [((0, T), (0, 1)), ((T, TT), (0, 1)), ((TT, 1), (0, 1))],
        [((0, 1), (0, T)), ((0, 1), (T, TT)), ((0, 1), (TT, 1))],
    ],
    "halves": [[((0, 0.5), (0, 1)), ((0.5, 1), (0, 1))], [((0, 1), (0, 0.5)), ((0, 1), (0.5, 1))]],
    "cells": [[((c / 2, c / 2 + 0.5), (r / 2, r / 2 + 0.5)) for r in (0, 1) for c in (0, 1)]],
}
COMBOS = [
    ["cuts"],
    ["bands"],
    ["cells"],
    ["halves"],
    ["cuts", "bands"],
    ["cuts", "cells"],
    ["bands", "cells"],
    list(SPLITS),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", required=True, help="a trained model under models/trained")
    ap.add_argument("--split", default="val")
    ap.add_argument("--images", help="the images' folder (default: data/images)")
    args = ap.parse_args()
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from tokenfocus.env import torch_threads
    from tokenfocus.scoring import Scorer
    from tokenfocus.scoring.grounding import _canvas, box_view

    torch_threads(2)
    images_root = Path(args.images) if args.images else ROOT / "data" / "images"
    model = ROOT / "models/trained" / args.backbone / "model"
    scorer = Scorer.load(model, grounding=GroundingConfig(enabled=False))
    split_of = json.loads((ROOT / "work/splits.json").read_text())["prompts"]
    cfg = GroundingConfig()
    items = []  # (record, key, Count, true?)
    for r in json.loads((ROOT / "data/train_list.json").read_text()):
        if split_of.get(r["prompt_id"], {}).get("split") != args.split:
            continue
        for key, votes in r["element_score"].items():
            count = parse_count(key, r["prompt"], list(r["element_score"]), cfg)
            if count and len(parse_element_key(key).text.split()) > 1:
                items.append((r, key, count, float(np.mean(votes) >= 0.5)))
    boxes = list(dict.fromkeys(b for splits in SPLITS.values() for parts in splits for b in parts))
    asked, seen = [], []
    for r, key, count, _ in items:
        image = Image.open(images_root / r["img_path"]).convert("RGB")
        canvas, keys = _canvas(image), count_keys(count, cfg)
        got = scorer.elements_prefix(
            [image] + [box_view(canvas, *b) for b in boxes],
            [r["prompt"]] * (1 + len(boxes)),
            [[key]] + [keys] * len(boxes),
        )
        asked.append(got[0][key])
        seen.append({b: [g[k] for k in keys] for b, g in zip(boxes, got[1:], strict=True)})
    y = np.array([t for *_, t in items])
    print(f"{args.backbone}, {args.split}: {len(items)} counting elements, {y.mean():.3f} true")
    print(
        f"  {'asked':22s} accuracy {((np.array(asked) >= 0.5) == y).mean():.3f}, AUC {roc_auc_score(y, asked):.3f}"
    )
    for combo in COMBOS:
        splits = [parts for name in combo for parts in SPLITS[name]]
        p = np.array(
            [
                counted_probability(a, c.number, [[s[b] for b in parts] for parts in splits])
                for a, (_, _, c, _), s in zip(asked, items, seen, strict=True)
            ]
        )
        print(
            f"  {' + '.join(combo):22s} accuracy {((p >= 0.5) == y).mean():.3f}, AUC {roc_auc_score(y, p):.3f}"
        )


if __name__ == "__main__":
    main()
