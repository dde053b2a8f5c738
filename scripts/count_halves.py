"""Can a count be read from the image's parts? (issue 23, section 4: the measurement behind
``score.grounding.count_categories``)

The tiny backbones tell whether an object is in a part of the image far better than how many of
it there are. This reads a counting element (``three circles (counting)``) from the two parts of
the image on either side of a cut, the hidden part filled with the image's median colour (the
views of :mod:`tokenfocus.scoring.grounding`):

1. Per part, a count distribution over 0..4: P(0) = 1 - P(circle); the rest of the mass split by
   the yes/no answers of "one circle", "two circles", ... "four circles", normalised.
2. The whole image's count distribution is the two parts' convolved (each object in one part).
3. The element's score is the convolved probability of the claimed count, averaged over the cuts
   (halves and thirds, across and down).

It prints, over the split's counting elements with compositional keys, the accuracy at 0.5 and
the AUC of the element's own question and of the parts' reading, and the 5-fold accuracy of a
logistic calibration of each (the normalised reading is no probability of yes: only AUC and the
calibrated accuracy compare). The scorer's own reading (:mod:`tokenfocus.scoring.counting`, the
thirds alone, and the claimed count's share of the likeliest) is measured by the pipeline.
docs/styles.md, "Counting read from the image's parts".

    .venv/bin/python scripts/count_halves.py --backbone fastvlm_gemma [--split val] \
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
from tokenfocus.scoring.counting import convolve, count_keys, parse_count, part_distribution  # noqa: E402

#: (edge, cut): the halves across and down, and the thirds.
CUTS = [("left", 0.5), ("top", 0.5), ("left", 0.333), ("left", 0.667), ("top", 0.333), ("top", 0.667)]


def parts_reading(answers: np.ndarray, claimed: np.ndarray) -> np.ndarray:
    """The parts' probability of each claimed count, from ``(N, 1 + 2 * len(CUTS), 5)`` answers
    (the whole image first, then each cut's two parts), averaged over the cuts."""
    dist = part_distribution(answers)
    idx = np.arange(len(claimed))
    per_cut = [convolve(dist[:, 1 + 2 * c], dist[:, 2 + 2 * c])[idx, claimed] for c in range(len(CUTS))]
    return np.mean(per_cut, axis=0)


def _elements(records, split_of, split: str, cfg: GroundingConfig):
    """(record, its counting element as the scorer parses it, true?) for the split's compositional
    counting keys (``three circles (counting)``; the short form names no object of its own)."""
    for r in records:
        if split_of.get(r["prompt_id"], {}).get("split") != split:
            continue
        keys = list(r["element_score"])
        for key, votes in r["element_score"].items():
            count = parse_count(key, r["prompt"], keys, cfg)
            if count and len(parse_element_key(key).text.split()) > 1:
                yield r, count, float(np.mean(votes) >= 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", required=True, help="a trained model under models/trained")
    ap.add_argument("--split", default="val")
    ap.add_argument("--data", default="data")
    ap.add_argument(
        "--images", help="the images' folder (default: DATA/images); e.g. data/heldout_style/images"
    )
    args = ap.parse_args()
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    from tokenfocus.env import torch_threads
    from tokenfocus.scoring import Scorer
    from tokenfocus.scoring.grounding import _canvas, part_view

    torch_threads(2)
    root = Path(args.data)
    images_root = Path(args.images) if args.images else root / "images"
    scorer = Scorer.load(
        ROOT / "models/trained" / args.backbone / "model", grounding=GroundingConfig(enabled=False)
    )
    split_of = json.loads((ROOT / "work/splits.json").read_text())["prompts"]
    cfg = GroundingConfig()
    items = list(_elements(json.loads((root / "train_list.json").read_text()), split_of, args.split, cfg))
    answers = []
    for start in range(0, len(items), 8):
        images, prompts, keys = [], [], []
        for r, count, _ in items[start : start + 8]:
            img = Image.open(images_root / r["img_path"]).convert("RGB")
            canvas = _canvas(img)
            views = [img] + [
                part_view(img, e, c, keep, canvas=canvas) for e, c in CUTS for keep in (True, False)
            ]
            images += views
            prompts += [r["prompt"]] * len(views)
            keys += [count_keys(count, cfg)] * len(views)
        got = scorer.elements_prefix(images, prompts, keys)
        answers += [[g[k] for k in ks] for g, ks in zip(got, keys, strict=True)]
    answers = np.array(answers).reshape(len(items), 1 + 2 * len(CUTS), 5)
    claimed = np.array([c.number for _, c, _ in items])
    y = np.array([t for *_, t in items])
    asked = answers[np.arange(len(items)), 0, claimed]
    parts = parts_reading(answers, claimed)

    def logit(p):
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    print(f"{args.backbone}, {args.split}: {len(items)} counting elements, {y.mean():.3f} true")
    for name, cols in {"asked": [asked], "parts": [parts], "asked + parts": [asked, parts]}.items():
        x = np.stack([logit(c) for c in cols], 1)
        cv = cross_val_predict(LogisticRegression(), x, y, cv=5, method="predict_proba")[:, 1]
        raw = f"accuracy at 0.5 {((cols[0] >= 0.5) == y).mean():.3f}, " if len(cols) == 1 else ""
        print(
            f"  {name:14s} {raw}AUC {roc_auc_score(y, cv if len(cols) > 1 else cols[0]):.3f}, "
            f"calibrated accuracy (5-fold) {((cv >= 0.5) == y).mean():.3f}"
        )


if __name__ == "__main__":
    main()
