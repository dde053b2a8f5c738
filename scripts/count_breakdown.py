"""Where a pre-trained base's count checks fail, and whether the counts are visible at all.

On fresh 1-3 group scenes (pre-training's scene drawer, its own seed): the base's yes/no count
checks broken down by the asked group's true count, the scene's number of groups and, for false
claims, how far the claimed count is from the true one. Beside it an ideal-observer proxy with no
learning: the connected components of the group's colour in the 64-px image, against its count.
Usage: python scripts/count_breakdown.py [slug ...] [--n 600]. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict

from tokenfocus.env import apply_env

apply_env()  # before torch loads: the kernels' dispatch is read once
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from tokenfocus.backbones import load_model_and_processor, template_parts  # noqa: E402
from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.pretrain.checks import yes_margins  # noqa: E402
from tokenfocus.pretrain.curriculum import Pool, noun, question  # noqa: E402
from tokenfocus.render import BACKGROUNDS, COUNTS, drawn_fill  # noqa: E402

SEED = 12345  # not pre-training's seed (99) nor its checks' (0)


def _rates(hits: dict[str, list[bool]]) -> dict[str, list]:
    return {k: [round(sum(v) / len(v), 3), len(v)] for k, v in sorted(hits.items())}


def visible_counts(pool: Pool) -> dict[str, list]:
    """Share of groups whose count equals the number of connected blobs of the group's colour."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for scene, image in zip(pool.scenes, pool.images, strict=True):
        pixels = np.asarray(image).astype(int)
        for g in scene.groups:
            fill = drawn_fill(g.color, BACKGROUNDS[scene.background])
            mask = np.abs(pixels - np.array(fill)).sum(-1) < 60
            labels, k = ndimage.label(mask, structure=np.ones((3, 3)))
            areas = ndimage.sum(mask, labels, range(1, k + 1)) if k else []
            ok = sum(1 for a in areas if a >= 3) == g.count
            for key in ("all", f"count={g.count}", f"groups={len(scene.groups)}", f"size={g.size}"):
                hits[key].append(ok)
    return _rates(hits)


@torch.inference_mode()
def count_checks(slug: str, pool: Pool, params) -> dict[str, list]:
    """The base's count-check accuracy, broken down (claims half true, half false)."""
    bb = params.backbone(slug)
    model, processor = load_model_and_processor(bb.source, bb, slug=slug)
    parts = template_parts(processor)
    rng = random.Random(SEED)
    qs = [question(s, ["count"], rng, mode="check", truth=i % 2 == 0) for i, s in enumerate(pool.scenes)]
    margins = yes_margins(model, processor, [parts.head + q.text + parts.tail for q in qs], pool.images)
    number = {w: c for c, w in COUNTS.items()}
    hits: dict[str, list[bool]] = defaultdict(list)
    for q, scene, m in zip(qs, pool.scenes, margins, strict=True):
        ok = (m > 0) == q.truth
        g = next(g for g in scene.groups if noun(g.shape) in q.text)
        claimed = next(c for w, c in number.items() if f" {w} " in f" {q.text} ")
        claim = "true claims" if q.truth else f"false claims off by {abs(claimed - g.count)}"
        for key in ("all", claim, f"count={g.count}", f"groups={len(scene.groups)}"):
            hits[key].append(ok)
    return _rates(hits)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("slugs", nargs="*", default=["fastvlm_gemma"])
    ap.add_argument("--n", type=int, default=600)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    pool = Pool.draw(args.n, 64, SEED, max_groups=3)
    params = load_params()
    out = {"visible": visible_counts(pool), **{s: count_checks(s, pool, params) for s in args.slugs}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
