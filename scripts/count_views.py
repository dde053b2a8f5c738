"""Which parts of the image read a count best? (issue 23, section 4: the measurement behind
``score.grounding.count_views``)

Per compositional counting element of a split (``three circles (counting)``), the counted object
and one to four of it are asked on every view below, once; the element's own question is asked
on the whole image. Each split of the image (its parts' count distributions convolved, as
:func:`tokenfocus.scoring.counting.counted_probability` does) then reads the claimed count, and
P(yes) is the mean of the answer and that reading. It prints the accuracy at 0.5 and the AUC per
combination of splits, then, for bands + cells, other ways to join the answer and the reading
(``--readings``), and whether the parts tell the counted object's presence better than the whole
image does (``--objects``, against the pair's own object element):

- ``cuts``: at a third and at two thirds, across and down, each cut's two parts (shipped before);
- ``bands``: three bands between the thirds, across and down;
- ``halves``: the two halves, across and down;
- ``cells``: the 2 x 2 cells.

docs/styles.md, "Counts read from bands and cells", and "Other readings of the parts".

    .venv/bin/python scripts/count_views.py --backbone fastvlm_gemma [--split val] \
        [--images data/heldout_style/images] [--readings] [--objects]
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
    ap.add_argument("--readings", action="store_true", help="other joins of answer and reading")
    ap.add_argument("--objects", action="store_true", help="the object's presence from the parts")
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
    items = []  # (record, key, Count, true?, the object element's truth or None)
    for r in json.loads((ROOT / "data/train_list.json").read_text()):
        if split_of.get(r["prompt_id"], {}).get("split") != args.split:
            continue
        for key, votes in r["element_score"].items():
            count = parse_count(key, r["prompt"], list(r["element_score"]), cfg)
            if count and len(parse_element_key(key).text.split()) > 1:
                obj = r["element_score"].get(f"{count.noun} (object)")
                truth = None if obj is None else float(np.mean(obj) >= 0.5)
                items.append((r, key, count, float(np.mean(votes) >= 0.5), truth))
    boxes = list(dict.fromkeys(b for splits in SPLITS.values() for parts in splits for b in parts))
    asked, present, seen = [], [], []  # the element's answer, the object's on the whole image, the views'
    for r, key, count, *_ in items:
        image = Image.open(images_root / r["img_path"]).convert("RGB")
        canvas, keys = _canvas(image), count_keys(count, cfg)
        got = scorer.elements_prefix(
            [image] + [box_view(canvas, *b) for b in boxes],
            [r["prompt"]] * (1 + len(boxes)),
            [[key, *keys]] + [keys] * len(boxes),
        )
        asked.append(got[0][key])
        present.append(got[0][keys[0]])
        seen.append({b: [g[k] for k in keys] for b, g in zip(boxes, got[1:], strict=True)})
    y = np.array([it[3] for it in items])
    print(f"{args.backbone}, {args.split}: {len(items)} counting elements, {y.mean():.3f} true")
    print(
        f"  {'asked':22s} accuracy {((np.array(asked) >= 0.5) == y).mean():.3f}, AUC {roc_auc_score(y, asked):.3f}"
    )
    for combo in COMBOS:
        splits = [parts for name in combo for parts in SPLITS[name]]
        p = np.array(
            [
                counted_probability(a, c.number, [[s[b] for b in parts] for parts in splits])
                for a, (_, _, c, *_), s in zip(asked, items, seen, strict=True)
            ]
        )
        print(
            f"  {' + '.join(combo):22s} accuracy {((p >= 0.5) == y).mean():.3f}, AUC {roc_auc_score(y, p):.3f}"
        )

    if args.readings:
        _readings(asked, items, seen, y)
    if args.objects:
        _objects(present, items, seen)


def _readings(asked, items, seen, y) -> None:
    """Bands + cells' reading joined with the element's answer in other ways than their mean."""
    from sklearn.metrics import roc_auc_score

    splits = [parts for name in ("bands", "cells") for parts in SPLITS[name]]
    halves = splits + SPLITS["halves"]
    a = np.array(asked)
    # counted_probability(0, ...) is half the reading alone: the answer joins it below
    read = np.array(
        [
            2 * counted_probability(0.0, c.number, [[s[b] for b in p] for p in splits])
            for (_, _, c, *_), s in zip(items, seen, strict=True)
        ]
    )
    read_h = np.array(
        [
            2 * counted_probability(0.0, c.number, [[s[b] for b in p] for p in halves])
            for (_, _, c, *_), s in zip(items, seen, strict=True)
        ]
    )
    joins = {
        "mean (shipped)": (a + read) / 2,
        "reading alone": read,
        "answer 1/3": a / 3 + 2 * read / 3,
        "answer 2/3": 2 * a / 3 + read / 3,
        "geometric mean": np.sqrt(a * read),
        "mean, reading squared": (a + read**2) / 2,
        "mean, reading's root": (a + np.sqrt(read)) / 2,
        "mean, + halves": (a + read_h) / 2,
    }
    for name, p in joins.items():
        print(f"  {name:22s} accuracy {((p >= 0.5) == y).mean():.3f}, AUC {roc_auc_score(y, p):.3f}")


def _objects(present, items, seen) -> None:
    """The counted object's presence, once a pair and object, from the whole image and from the parts."""
    from sklearn.metrics import roc_auc_score

    cells, bands = SPLITS["cells"][0], [b for parts in SPLITS["bands"] for b in parts]
    once = {}
    for p, (r, _, c, _, truth), s in zip(present, items, seen, strict=True):
        if truth is not None:
            at_cells = np.array([s[b][0] for b in cells])
            once[(r["img_path"], c.noun)] = (
                truth,
                {
                    "whole image": p,
                    "most in a cell": at_cells.max(),
                    "any cell (1 - prod)": 1 - np.prod(1 - at_cells),
                    "most in a band": max(s[b][0] for b in bands),
                },
            )
    t = np.array([truth for truth, _ in once.values()])
    print(f"objects: {len(t)} counted objects with an object element, {t.mean():.3f} present")
    for name in next(iter(once.values()))[1]:
        p = np.array([got[name] for _, got in once.values()])
        print(f"  {name:22s} accuracy {((p >= 0.5) == t).mean():.3f}, AUC {roc_auc_score(t, p):.3f}")


if __name__ == "__main__":
    main()
