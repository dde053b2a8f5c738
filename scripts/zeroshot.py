"""The zero-shot baseline: the shipped pre-trained bases, no fine-tuning, on SynthMuse val/test.

Fine-tuning is measured against it (docs/tiny-backbones.md): per-category element AUC and
accuracy, the SRCC of the mean element P(yes) with the human score, and the overall 1..5
question's SRCC. Writes eval/zeroshot.json. Usage: python scripts/zeroshot.py [slug ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from tokenfocus.config import load_params
from tokenfocus.env import apply_env
from tokenfocus.evalmuse import parse_element_key
from tokenfocus.predictions import score_backbone


def table_summary(rows: list[dict]) -> dict:
    """Element AUC / accuracy per category, element-mean SRCC and overall SRCC of a prediction table."""
    by_cat: dict[str, tuple[list, list]] = {}
    for r in rows:
        for k, p in r["elements"].items():
            g = r["gt_elements"].get(k)
            if g is not None:
                pe, ge = by_cat.setdefault(parse_element_key(k).category, ([], []))
                pe.append(p)
                ge.append(g >= 0.5)
    cats = {}
    for c, (pe, ge) in sorted(by_cat.items()):
        auc = roc_auc_score(ge, pe) if 0 < sum(ge) < len(ge) else None
        acc = float(np.mean((np.array(pe) >= 0.5) == np.array(ge)))
        cats[c] = {"auc": None if auc is None else round(float(auc), 3), "acc": round(acc, 3), "n": len(pe)}
    gt = [r["gt_score"] for r in rows]
    mean = [np.mean(list(r["elements"].values())) if r["elements"] else 0.5 for r in rows]
    return {
        "element_mean_srcc": round(float(spearmanr(mean, gt).statistic), 3),
        "overall_srcc": round(float(spearmanr([r["score"] for r in rows], gt).statistic), 3),
        "categories": cats,
    }


def main(slugs: list[str]) -> dict:
    apply_env()
    params = load_params()
    out = {}
    for slug in slugs or [s for s, bb in params.backbones.items() if bb.family]:
        bb = params.backbone(slug)
        score_backbone(slug, params, splits=("val", "test"), model_dir=bb.source, out=f"work/zeroshot/{slug}")
        out[slug] = {
            split: table_summary(json.loads(Path(f"work/zeroshot/{slug}/{split}.json").read_text()))
            for split in ("val", "test")
        }
        print(slug, json.dumps(out[slug]), flush=True)
    Path("eval").mkdir(exist_ok=True)
    Path("eval/zeroshot.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
