"""Counting elements read from pre-training's open count question, against the scored P(yes).

Each compositional counting element of a scored split (``"three circles (counting)"``) is asked
pre-training's open question ``how many circles are there ?`` on the whole image, and the first
answer token is read over the count words ``one`` .. ``four``. The readings (the claimed count's
probability, and its share of the likeliest count's) are compared by AUC and accuracy at 0.5
with the split's table, which holds the element answer averaged with the parts' reading
(``score.grounding``). Measured in docs/styles.md ("The open count question").
Usage: python scripts/open_count.py MODEL_DIR SCORES_DIR [split ...]. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenfocus.env import apply_env

apply_env()  # before torch loads: the kernels' dispatch is read once
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.evalmuse import parse_element_key  # noqa: E402
from tokenfocus.images import open_image  # noqa: E402
from tokenfocus.predictions import image_root, read_table  # noqa: E402
from tokenfocus.pretrain.curriculum import OPEN, noun  # noqa: E402
from tokenfocus.render import COUNTS, SHAPES  # noqa: E402
from tokenfocus.scoring.readout import encode, first_answer_logits  # noqa: E402
from tokenfocus.scoring.scorer import Scorer  # noqa: E402
from tokenfocus.synth import plural  # noqa: E402

WORDS = [COUNTS[n] for n in sorted(COUNTS)]


def shape_of(word: str) -> str | None:
    """The shape a key's noun names, singular or plural (``crosses`` -> ``cross``), or None."""
    return next((s for s in SHAPES if word in (s, plural(s, 2))), None)


def counting_rows(rows: list[dict]) -> list[tuple[int, str, float, float]]:
    """(row, key, scored P(yes), label) of every compositional counting element of a table whose
    count is ``one`` .. ``four`` of a shape."""
    out = []
    for i, r in enumerate(rows):
        for k, p in r["elements"].items():
            el = parse_element_key(k)
            words = el.text.split()
            if el.category == "counting" and len(words) == 2 and words[0] in WORDS and shape_of(words[1]):
                out.append((i, k, p, r["gt_elements"][k]))
    return out


@torch.inference_mode()
def open_counts(scorer: Scorer, images, keys: list[str], batch: int = 32) -> np.ndarray:
    """(N, 4) distributions over ``one`` .. ``four`` of the open count question per element."""
    ids = [scorer.processor.tokenizer.convert_tokens_to_ids(w) for w in WORDS]
    texts = [
        scorer.parts.head
        + OPEN["count"].format(noun=noun(shape_of(parse_element_key(k).text.split()[1])))
        + scorer.parts.tail
        for k in keys
    ]
    out = []
    for s in range(0, len(texts), batch):
        enc = encode(scorer.processor, texts[s : s + batch], images[s : s + batch])
        out.append(torch.softmax(first_answer_logits(scorer.model, enc)[:, ids].float(), -1))
    return torch.cat(out).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("scores", type=Path)
    ap.add_argument("splits", nargs="*", default=["val", "test"])
    args = ap.parse_args()
    params = load_params("params.yaml")
    scorer = Scorer.load(args.model, threads=params.score.threads)
    report = {}
    for split in args.splits:
        table, root = read_table(args.scores / f"{split}.json"), image_root(params, split)
        rows = counting_rows(table)
        decoded = {i: open_image(root / table[i]["img_path"]) for i in {i for i, *_ in rows}}  # once a pair
        images = [decoded[i] for i, *_ in rows]
        dist = open_counts(scorer, images, [k for _, k, *_ in rows])
        claimed = np.array([WORDS.index(parse_element_key(k).text.split()[0]) for _, k, *_ in rows])
        y = np.array([label >= 0.5 for *_, label in rows])
        scored = np.array([p for _, _, p, _ in rows])
        share = dist[np.arange(len(rows)), claimed] / dist.max(1)
        readings = {
            "scored": scored,
            "open_claimed": dist[np.arange(len(rows)), claimed],
            "open_share_of_likeliest": share,
            "mean_scored_and_open_share": (scored + share) / 2,
        }
        report[split] = {"n": len(rows), "true_share": round(float(y.mean()), 3)} | {
            name: {"auc": round(roc_auc_score(y, v), 3), "acc": round(float(((v >= 0.5) == y).mean()), 3)}
            for name, v in readings.items()
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
