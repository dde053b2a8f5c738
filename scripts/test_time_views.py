"""Test-time views (docs/styles.md): each backbone's answers averaged over the original image and
label-preserving views of it, stacked as the pipeline stacks, in every drawing the data holds.

Each trained backbone scores every split the pipeline scores (val and its redrawings, so that the
stacker is fitted on the views it is applied to; test; the held-out and check families) once per
view; the tables are averaged as bagging averages seeds (``bag_tables``). ``--overall-mirror``
instead asks only the overall question again, on the image mirrored left to right (its prompt and
element keys mirrored too, as ``score.grounding.mirror_categories`` asks elements), and averages
that distribution into each row. Run after ``make run``:

    .venv/bin/python scripts/test_time_views.py [--out work/views] [--overall-mirror]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()

import torch  # noqa: E402
from PIL import ImageEnhance, ImageFilter, ImageOps  # noqa: E402

from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.ensemble_stages import fit_stack  # noqa: E402
from tokenfocus.env import torch_threads  # noqa: E402
from tokenfocus.images import load_images  # noqa: E402
from tokenfocus.predictions import (  # noqa: E402
    image_root,
    metrics_of,
    prediction_rows,
    read_table,
    scored_splits,
    split_records,
)
from tokenfocus.scoring import Scorer  # noqa: E402
from tokenfocus.scoring.mirror import mirror_text  # noqa: E402
from tokenfocus.scoring.readout import distribution_stats  # noqa: E402
from tokenfocus.stack import bag_tables  # noqa: E402

#: One setting each, fixed before any run: a mild blur, and a darker, lower-contrast image.
VIEWS = {
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(0.7)),
    "contrast": lambda im: ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(0.92)).enhance(0.85),
}


def view_table(scorer: Scorer, records, images: dict, view) -> list[dict]:
    """One backbone's prediction table of ``records`` with every image seen through ``view``."""
    rows = []
    for i in range(0, len(records), 64):
        part = records[i : i + 64]
        results = scorer(
            [view(images[r.img_path].convert("RGB")) for r in part],
            [r.prompt for r in part],
            [[e.key for e in r.elements] for r in part],
        )
        rows += prediction_rows(part, results)
    return rows


def mirrored_overall(scorer: Scorer, records, images: dict) -> list[list[float]]:
    """The overall question's distributions on each image mirrored left to right, with its prompt
    and element keys mirrored too (the elements go into the question as the pipeline asks it)."""
    dists = []
    for i in range(0, len(records), 64):
        part = records[i : i + 64]
        keys = [[mirror_text(e.key) for e in r.elements] for r in part]
        dists += scorer.overall(
            [ImageOps.mirror(images[r.img_path].convert("RGB")) for r in part],
            [mirror_text(r.prompt) for r in part],
            keys if any(keys) else None,
        ).tolist()
    return dists


def with_overall(rows: list[dict], dists: list[list[float]]) -> list[dict]:
    """``rows`` with each overall distribution the mean of its own and ``dists``' (its score and
    entropy read again from the mean)."""
    mean = (torch.tensor([r["distribution"] for r in rows]) + torch.tensor(dists)) / 2
    score, entropy = distribution_stats(mean)
    return [
        {**r, "distribution": d.tolist(), "score": float(s), "entropy": float(h)}
        for r, d, s, h in zip(rows, mean, score, entropy, strict=True)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="work/views", help="the views' tables (reused when present)")
    ap.add_argument("--overall-mirror", action="store_true", help="the overall question on the mirror alone")
    args = ap.parse_args()
    views = {"overall_mirror": None} if args.overall_mirror else VIEWS
    params = load_params()
    torch_threads(params.score.threads)
    slugs, out = list(params.backbones), Path(args.out)
    splits = [s for s in scored_splits(params) if s != "ntire"]
    tables = {
        (s, "original", sp): read_table(Path(params.score.out) / s / f"{sp}.json")
        for s in slugs
        for sp in splits
    }
    for s in slugs:
        scorer = None
        for sp in splits:
            todo = [v for v in views if not (out / s / v / f"{sp}.json").exists()]
            if todo:  # the split's images decoded once, seen through each view still to score
                scorer = scorer or Scorer.load(Path(params.train.out) / s / "model")
                records = split_records(params, sp)
                images = load_images(image_root(params, sp), [r.img_path for r in records])
            for v in todo:
                f = out / s / v / f"{sp}.json"
                f.parent.mkdir(parents=True, exist_ok=True)
                got = mirrored_overall(scorer, records, images) if v == "overall_mirror" else None
                f.write_text(json.dumps(got or view_table(scorer, records, images, VIEWS[v])))
                print(s, v, sp, "scored", flush=True)
            for v in views:
                table = json.loads((out / s / v / f"{sp}.json").read_text())
                tables[s, v, sp] = (
                    with_overall(tables[s, "original", sp], table) if v == "overall_mirror" else table
                )
    shown = [sp for sp in splits if sp == "test" or not sp.startswith(("val", "test_short"))]
    print("| views averaged | " + " | ".join(f"{sp} SRCC / NTIRE" for sp in shown) + " |")
    rows = [["original"], ["overall_mirror"]] if args.overall_mirror else None
    for averaged in rows or (
        ["original"],
        ["original", "contrast"],
        ["original", "blur"],
        ["original", *VIEWS],
    ):
        per = {sp: {s: bag_tables([tables[s, v, sp] for v in averaged]) for s in slugs} for sp in splits}
        ens = fit_stack(params, per["val"], styled=per)
        cells = []
        for sp in shown:
            m = metrics_of(ens.combine(per[sp]))
            cells.append(f"{m['srcc']:.3f} / {m['final']:.3f}")
        print(f"| {' + '.join(averaged)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
