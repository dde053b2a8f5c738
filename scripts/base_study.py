"""One backbone fine-tuned from another pre-trained base, and the stack refitted with it (issue 23).

A base pre-trained with other switches (for example on an `exp/` branch, into a folder of its own)
is fine-tuned with the pipeline's params, scored on val, test, the held-out style family and the
short-key test pairs, and put in the place of that backbone in the ridge stack: the stack is fitted
on val as the pipeline fits it (`tokenfocus.stack.fit_ensemble`), with the other backbones'
predictions read from the pipeline's own `score.out` (run `make run` first). Prints the
backbone's figures, its element accuracy and AUC per category, and the stack's test, held-out and
short-key figures, against the pipeline's.

    .venv/bin/python scripts/base_study.py fastvlm_gemma /tmp/exp/R3 /tmp/study/R3 [--scored]

`--scored`: the work folder already holds the fine-tuned model's scores; only measure.
`--zero-shot`: score the base itself on the test pairs (no fine-tuning) and stop.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()

from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.predictions import HELDOUT, SHORT, metrics_of, read_table, score_backbone  # noqa: E402
from tokenfocus.stack import fit_ensemble  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zeroshot import table_summary  # noqa: E402  (per-category element AUC and accuracy)

SPLITS = ("val", "test", HELDOUT, SHORT)


def stack_figures(params, tables: dict[str, dict[str, list[dict]]]) -> dict:
    """The ridge stack fitted on val, measured on the test split and its two variants."""
    ens = fit_ensemble(tables["val"], params.stack)
    out = {}
    for split in SPLITS[1:]:
        m = metrics_of(ens.combine(tables[split]))
        out[split] = {k: round(m[k], 4) for k in ("srcc", "plcc", "element_acc", "final")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slug")
    ap.add_argument("base", help="the pre-trained base folder to fine-tune from")
    ap.add_argument("work", type=Path, help="where the fine-tuned model and its scores go")
    ap.add_argument("--scored", action="store_true", help="only measure what the work folder holds")
    ap.add_argument("--zero-shot", action="store_true", help="score the base as it is, on test")
    args = ap.parse_args()
    p = load_params()
    shipped = Path(p.score.out)
    bbs = dict(p.backbones)
    bbs[args.slug] = dataclasses.replace(bbs[args.slug], source=args.base)
    p = dataclasses.replace(
        p,
        backbones=bbs,
        train=dataclasses.replace(p.train, out=str(args.work / "train")),
        score=dataclasses.replace(p.score, out=str(args.work / "scores")),
    )
    if args.zero_shot:
        score_backbone(args.slug, p, splits=("test",), model_dir=Path(args.base))
        print(json.dumps(table_summary(read_table(args.work / "scores" / args.slug / "test.json"))))
        return
    if not args.scored:
        from tokenfocus.train import Trainer

        summary = Trainer(args.slug, p).run()
        print("best val SRCC", summary["best_val_srcc"], "steps", summary["steps"])
        score_backbone(args.slug, p, splits=SPLITS, model_dir=Path(p.train.out) / args.slug / "model")
    mine = {s: read_table(args.work / "scores" / args.slug / f"{s}.json") for s in SPLITS}
    theirs = {s: read_table(shipped / args.slug / f"{s}.json") for s in SPLITS}
    others = {
        s: {b: read_table(shipped / b / f"{s}.json") for b in p.backbones if b != args.slug} for s in SPLITS
    }
    report: dict = {}
    for name, t in (("pipeline", theirs), ("this base", mine)):
        report[name] = {
            s: {
                k: round(v, 4)
                for k, v in metrics_of(t[s]).items()
                if k in ("srcc", "plcc", "element_acc", "final")
            }
            for s in SPLITS
        }
        report[name]["test categories"] = table_summary(t["test"])["categories"]
        report[name]["stack"] = stack_figures(p, {s: others[s] | {args.slug: t[s]} for s in SPLITS})
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
