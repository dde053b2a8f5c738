"""Image augmentation in fine-tuning, with and without (issue 23, section 3): one backbone trained
from the same shipped base at each strength, params otherwise as in params.yaml, each scored on
the test split and on the same prompts drawn in the held-out style family. `lighting`: random
lighting (train.augment_lighting, iMatch's); `styles`: the scene redrawn in another training
style (train.augment_styles, SynthMuse's styled/ copies); `counterfactual`: present counting and
spatial elements asked with their count one off or relation turned round (train.counterfactual);
`short_keys`: training pairs keyed in EvalMuse's short form (train.short_keys); `elements`: element
questions per pair and step (train.elements_per_pair); `freeze_tower`: full fine-tuning with the
vision tower kept as the base's (backbones.<slug>.freeze_tower, 0 or 1). Each run is also scored
on the test pairs with short keys (test_short), and on val, where the ridge stack is refitted with
this run in the backbone's place (the others' predictions are the pipeline's: `make run` first).

    .venv/bin/python scripts/augment_study.py [--backbone fastvlm_gemma] [--augment lighting]
        [--strengths 0 0.2] [--threads 1]

Writes eval/augment_study.json and prints a markdown table (docs/results.md quotes it by hand:
it is a study, not a pipeline stage). Needs `dvc repro split` (the splits) and the shipped bases.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()

from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.plots import category_accuracy  # noqa: E402
from tokenfocus.predictions import HELDOUT, SHORT, read_table, score_backbone  # noqa: E402
from tokenfocus.repro import dvc_executable  # noqa: E402
from tokenfocus.train import Trainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from base_study import SPLITS, stack_figures  # noqa: E402  (the ridge stack refitted on val)

#: what each study varies: a key of the train block
KNOBS = {
    "lighting": "augment_lighting",
    "styles": "augment_styles",
    "counterfactual": "counterfactual",
    "short_keys": "short_keys",
    "elements": "elements_per_pair",
}
#: what each study varies: a key of the backbone's block
BACKBONE_KNOBS = {"freeze_tower": "freeze_tower"}


def run(
    slug: str, augment: str, strength: float, work: Path, fixed: dict | None = None, threads: int = 0
) -> dict:
    p = load_params()
    shipped = Path(p.score.out)
    knob = {KNOBS[augment]: type(getattr(p.train, KNOBS[augment]))(strength)} if augment in KNOBS else {}
    bbs = dict(p.backbones)
    if augment in BACKBONE_KNOBS:
        bbs[slug] = dataclasses.replace(bbs[slug], **{BACKBONE_KNOBS[augment]: bool(strength)})
    pinned = {"threads": threads} if threads else {}
    p = dataclasses.replace(
        p,
        backbones=bbs,
        train=dataclasses.replace(
            p.train, **(fixed or {}), **knob, **pinned, out=str(work / f"{augment}{strength}")
        ),
        score=dataclasses.replace(p.score, **pinned, out=str(work / f"scores{strength}")),
    )
    summary = Trainer(slug, p).run()
    metrics = score_backbone(
        slug, p, splits=("val", "test", HELDOUT, SHORT), model_dir=Path(p.train.out) / slug / "model"
    )
    mine = Path(p.score.out)
    stack = stack_figures(
        p,
        {
            s: {b: read_table((mine if b == slug else shipped) / b / f"{s}.json") for b in p.backbones}
            for s in SPLITS
        },
    )
    held = read_table(mine / slug / f"{HELDOUT}.json")
    short = read_table(mine / slug / f"{SHORT}.json")
    return {
        augment: strength,
        "stack": stack,
        "steps": summary["steps"],
        "best_val_srcc": round(summary["best_val_srcc"], 4),
        "test": metrics["test"],
        "heldout_style": metrics[HELDOUT],
        "heldout_category_accuracy": category_accuracy(held),
        "test_short": metrics[SHORT],
        "short_category_accuracy": category_accuracy(short),
        "test_category_accuracy": category_accuracy(read_table(mine / slug / "test.json")),
    }


def fresh_split() -> None:
    """Refuse a stale ``work/splits.json``: a study on another split than the pipeline's is not
    comparable with docs/results.md."""
    import subprocess

    dvc = dvc_executable()
    status = subprocess.run([dvc, "status", "split"], capture_output=True, text=True)
    if "up to date" not in status.stdout:
        sys.exit(
            f"work/splits.json is not the pipeline's (dvc status split):\n{status.stdout}run `dvc repro split`"
        )


def main() -> None:
    fresh_split()
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="fastvlm_gemma")
    ap.add_argument("--augment", choices=[*KNOBS, *BACKBONE_KNOBS], default="lighting")
    ap.add_argument("--strengths", nargs="*", type=float, default=[0.0, 0.2])
    # more train keys held fixed over the strengths, as YAML: --fixed '{short_keys_overall: false}'
    ap.add_argument("--fixed", default="{}")
    ap.add_argument("--threads", type=int, default=0, help="torch threads a run uses (0: the params')")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        from ruamel.yaml import YAML

        fixed = YAML(typ="safe", pure=True).load(a.fixed) or {}
        rows = [
            run(a.backbone, a.augment, s, Path(tmp), fixed, a.threads) | {"fixed": fixed} for s in a.strengths
        ]
    Path("eval").mkdir(exist_ok=True)
    tag = "".join(f"_{k}-{v}" for k, v in sorted(fixed.items()))
    out = Path(f"eval/augment_study_{a.augment}_{a.backbone}{tag}.json")
    out.write_text(json.dumps({"backbone": a.backbone, "augment": a.augment, "runs": rows}, indent=1))
    print(
        f"| {a.augment} | steps | val SRCC | test SRCC | test NTIRE | held-out SRCC | held-out NTIRE "
        "| held-out object acc | short-key SRCC | short-key NTIRE |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, h, s = r["test"], r["heldout_style"], r["test_short"]
        print(
            f"| {r[a.augment]} | {r['steps']} | {r['best_val_srcc']:.4f} | {t['srcc']:.4f} | {t['final']:.4f} | "
            f"{h['srcc']:.4f} | {h['final']:.4f} | {r['heldout_category_accuracy'].get('object', float('nan')):.3f} | "
            f"{s['srcc']:.4f} | {s['final']:.4f} |"
        )

    print("\nElement accuracy per category, test / held-out / short keys:\n")
    cats = sorted(rows[0]["test_category_accuracy"])
    print(f"| {a.augment} | " + " | ".join(cats) + " |")
    print("|---|" + "---|" * len(cats))
    for r in rows:
        t, h, s = r["test_category_accuracy"], r["heldout_category_accuracy"], r["short_category_accuracy"]
        print(
            f"| {r[a.augment]} | "
            + " | ".join(
                f"{t[c]:.3f} / {h.get(c, float('nan')):.3f} / {s.get(c, float('nan')):.3f}" for c in cats
            )
            + " |"
        )

    print("\nThe ridge stack with this run in the backbone's place (fitted on val):\n")
    print(f"| {a.augment} | test SRCC | test NTIRE | held-out SRCC | held-out NTIRE | short-key NTIRE |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        st = r["stack"]
        print(
            f"| {r[a.augment]} | {st['test']['srcc']:.4f} | {st['test']['final']:.4f} | "
            f"{st[HELDOUT]['srcc']:.4f} | {st[HELDOUT]['final']:.4f} | {st[SHORT]['final']:.4f} |"
        )


if __name__ == "__main__":
    main()
