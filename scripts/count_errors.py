"""Where counting elements go wrong on a SynthMuse split: by how the drawing relates to the claim.

SynthMuse is drawn again in a scratch folder from the params' seed, without its redrawings, keeping
each image's scene as its prompt asks it and as it was drawn (``synth.generate``'s ``on_drawn``);
the script refuses where that does not give back the data's own ``train_list.json`` (data from
other params, or real EvalMuse). Each counting element of the split, in either key form, is then
one of :data:`CASES`: its group's count drawn right, off by one, off by two or more, or its group
missing or drawn as another shape (the labels of SynthMuse bind an element to its shape). Per case:
its number of elements, how many are labelled true, and the accuracy at 0.5 of each backbone's
table in ``score.out`` and of the registered stack's elements (``stack.out``, as it combines them).
The held-out family, the check families and the short keys are the test split's pairs, so their
cases are the test split's.

Usage: python scripts/count_errors.py [--split test] [--json], in the repository root after
``make run``. Measured with it: docs/styles.md, "Where the stack's counting errors are".
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from tokenfocus.env import apply_env

apply_env()  # before the stack's BLAS loads
from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.predictions import read_table  # noqa: E402
from tokenfocus.render import Scene  # noqa: E402
from tokenfocus.synth import elements_of, generate, short_keys  # noqa: E402

CASES = ("count right", "off by one", "off by two or more", "group missing or another shape")


def count_cases(prompt_scene: Scene, drawn: Scene, prompt: str) -> dict[str, str]:
    """Each counting element's key, compositional and short (as ``prompt`` writes it) -> its case."""
    out = {}
    shorts = short_keys(prompt_scene, prompt)
    for (key, _, kind, i), short in zip(elements_of(prompt_scene), shorts, strict=True):
        if kind != "count":
            continue
        if i in drawn.missing or drawn.groups[i].shape != prompt_scene.groups[i].shape:
            case = CASES[3]
        else:
            off = abs(drawn.groups[i].count - prompt_scene.groups[i].count)
            case = CASES[min(off, 2)]
        out[key] = out[short] = case
    return out


def drawn_scenes(params) -> dict[str, tuple[Scene, Scene]]:
    """img_path -> (the prompt's scene, the drawn one), SynthMuse drawn again as ``params`` say.

    Raises:
        SystemExit: the data under ``validate.data`` is not what these params draw.
    """
    scenes: dict[str, tuple[Scene, Scene]] = {}
    # the redrawings draw from streams of their own: without them the benchmark's bytes are the same
    styles = replace(params.styles, heldout_family="", check_families=[])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        generate(
            replace(params.synth, styled_copies=0),
            root,
            styles=styles,
            on_drawn=lambda path, scene, drawn: scenes.__setitem__(path, (scene, drawn)),
        )
        same = (root / "train_list.json").read_bytes() == (
            Path(params.validate.data) / "train_list.json"
        ).read_bytes()
    if not same:
        raise SystemExit(
            f"{params.validate.data}/train_list.json is not what params.yaml's synth block draws: "
            "the cases need SynthMuse generated from these params (`make data`)"
        )
    return scenes


def breakdown(tables: dict[str, list[dict]], scenes: dict[str, tuple[Scene, Scene]]) -> dict[str, dict]:
    """Per case: ``n``, ``true`` (elements labelled true) and each model's accuracy at 0.5.

    Args:
        tables: model -> prediction rows of one split, in the same order (``elements``,
            ``gt_elements``, ``img_path``, ``prompt``).
        scenes: :func:`drawn_scenes`.
    """
    hits: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    truth: dict[str, list[bool]] = defaultdict(list)
    first = next(iter(tables.values()))
    for i, row in enumerate(first):
        cases = count_cases(*scenes[row["img_path"]], row["prompt"])
        for key, label in row["gt_elements"].items():
            if label is None or key not in cases:
                continue
            case = cases[key]
            truth[case].append(label >= 0.5)
            for model, rows in tables.items():
                hits[case][model].append((rows[i]["elements"][key] >= 0.5) == (label >= 0.5))
    return {
        case: {
            "n": len(truth[case]),
            "true": sum(truth[case]),
            **{m: round(sum(h) / len(h), 3) for m, h in hits[case].items()},
        }
        for case in CASES
        if truth[case]
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--split", default="test", help="a scored split: test, val, heldout_style, check_<family>, ..."
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object, not a markdown table")
    args = ap.parse_args()
    params = load_params("params.yaml")
    slugs = list(params.backbones)
    tables = {s: read_table(Path(params.score.out) / s / f"{args.split}.json") for s in slugs}
    from tokenfocus.stack import Ensemble

    tables["stack"] = Ensemble.load(params.stack.out).combine(tables)
    result = breakdown(tables, drawn_scenes(params))
    if args.json:
        print(json.dumps(result, indent=1))
        return
    models = [*slugs, "stack"]
    print(f"| {args.split} counting elements | n | labelled true | " + " | ".join(models) + " |")
    print("|---|---|---|" + "---|" * len(models))
    for case, r in result.items():
        print(f"| {case} | {r['n']} | {r['true']} | " + " | ".join(f"{r[m]:.3f}" for m in models) + " |")


if __name__ == "__main__":
    main()
