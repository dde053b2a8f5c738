"""``docs/results.md``: generated from the metrics the pipeline wrote, never typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

from tokenfocus.config import Params, StackConfig

HEADER = "| model | SRCC | PLCC | element acc | NTIRE score |\n|---|---|---|---|---|\n"


def _load(path: Path) -> dict | list:
    return json.loads(path.read_text()) if path.exists() else {}


def _f(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _row(name: str, m: dict) -> str:
    if not m:
        return f"| {name} | - | - | - | - |\n"
    return f"| {name} | {_f(m['srcc'])} | {_f(m['plcc'])} | {_f(m['element_acc'])} | {_f(m['final'])} |\n"


def backbone_table(params: Params) -> str:
    """Per backbone: training CPU-minutes, steps and test metrics, with the ceiling."""
    lines = [
        "| backbone | tuning | loss | steps | test SRCC | PLCC | element acc | NTIRE | "
        "element-mean SRCC | ceiling SRCC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for slug, bb in params.backbones.items():
        t = _load(Path(params.train.out) / slug / "metrics.json")
        e = _load(Path("eval") / slug / "metrics.json")
        m = e.get("test", {}) if e else {}
        if not m:
            lines.append(f"| {slug} | {bb.tuning} | - | - | - | - | - | - | - | - |")
            continue
        lines.append(
            f"| {slug} | {bb.tuning} | {t.get('loss', '-')} | "
            f"{t.get('steps', '-')} | {_f(m['srcc'])} | {_f(m['plcc'])} | {_f(m['element_acc'])} | "
            f"{_f(m['final'])} | {_f(m.get('element_mean_srcc'))} | {_f(e.get('ceiling_srcc'), 3)} |"
        )
    return "\n".join(lines) + "\n"


def ensemble_table() -> str:
    rows = _load(Path("eval") / "ensemble" / "comparison.json") or []
    return HEADER + "".join(_row(r["model"], r) for r in rows)


def loss_study_table() -> str:
    """The focus-vs-lm study's runs and per-loss means (docs/loss-study.md)."""
    study = _load(Path("eval") / "loss_study.json")
    if not study:
        return "_Not run yet: `python scripts/loss_study.py`._\n"
    lines = [
        "| backbone | loss | seed | train CPU-min | test SRCC | PLCC | element acc | NTIRE | element-mean SRCC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in study["runs"]:
        m = r["test"]
        lines.append(
            f"| {r['backbone']} | {r['loss']} | {r['seed']} | {_f(r['cpu_minutes'], 1)} | {_f(m['srcc'])} | "
            f"{_f(m['plcc'])} | {_f(m['element_acc'])} | {_f(m['final'])} | {_f(m.get('element_mean_srcc'))} |"
        )
    for s in study.get("summary", []):
        lines.append(
            f"| **{s['backbone']}** | **{s['loss']} mean** | {s['n']} seeds | | {s['srcc_mean']:.4f} ± "
            f"{s['srcc_sd']:.4f} | | {s['acc_mean']:.4f} | {s['final_mean']:.4f} | "
            f"{_f(s.get('element_mean_srcc_mean'))} |"
        )
    return "\n".join(lines) + "\n" + study.get("note", "") + "\n"


def bases_table(params: Params) -> str:
    """Per tiny backbone: its pre-training cost and checks on fresh scenes (from the base's metadata)."""
    from tokenfocus.backbones import META_FILE
    from tokenfocus.stages import PRETRAIN_COSTS

    rows = []
    for slug, bb in params.backbones.items():
        meta = _load(Path(bb.source) / META_FILE) if bb.family else {}
        pt = meta.get("pretrain") if meta else None
        if pt:  # the CPU times from the stage's own record (a base saved before: its metadata)
            costs = _load(Path(PRETRAIN_COSTS.format(slug=slug))) or {}
            rows.append((slug, {**pt, "cpu_minutes": costs.get("cpu_minutes", pt.get("cpu_minutes"))}))
    if not rows:
        return "_No pre-trained tiny base found._\n"
    attrs = sorted({k for _, pt in rows for k in pt["check_accuracy"] if k != "all"})
    cats = sorted({k for _, pt in rows for k in pt["element_accuracy"] if k != "all"})
    lines = [
        "| base | CPU-min | "
        + " | ".join(f"check {a}" for a in attrs)
        + " | "
        + " | ".join(f"element {c}" for c in cats)
        + " |",
        "|---|---|" + "---|" * (len(attrs) + len(cats)),
    ]
    for slug, pt in rows:
        ca, ea = pt["check_accuracy"], pt["element_accuracy"]
        lines.append(
            f"| {slug} | {_f(pt['cpu_minutes'], 1)} | "
            + " | ".join(_f(ca.get(a), 3) for a in attrs)
            + " | "
            + " | ".join(_f(ea.get(c), 3) for c in cats)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _accuracy_grid(by_row: dict[str, dict[str, float]], label: str) -> str:
    """A table of accuracy per category (columns), one row per key of ``by_row``."""
    if not any(by_row.values()):
        return "_Not available._\n"
    names = sorted({c for v in by_row.values() for c in v})
    lines = [f"| {label} | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row, acc in by_row.items():
        lines.append(f"| {row} | " + " | ".join(_f(acc.get(c), 3) for c in names) + " |")
    return "\n".join(lines) + "\n"


def variant_table(params: Params, variant: str, label: str) -> str:
    """Per backbone and for the ensemble: the test split beside one of its variants (the same
    prompts drawn in the held-out style family, or keyed in EvalMuse's short form)."""
    ens = _load(Path("eval") / "ensemble" / "metrics.json")
    if not ens or not ens.get(variant):
        return f"_Not measured: the data has no {variant} set._\n"
    lines = [
        f"| model | SRCC test | SRCC {label} | PLCC test | PLCC {label} | element acc test | "
        f"element acc {label} | NTIRE test | NTIRE {label} | NTIRE difference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    models = [(s, _load(Path("eval") / s / "metrics.json")) for s in params.backbones]
    models.append(("ensemble", ens))
    for name, m in models:
        t, h = m.get("test", {}), m.get(variant, {})
        if not t or not h:
            continue
        cells = [_f(x.get(k)) for k in ("srcc", "plcc", "element_acc", "final") for x in (t, h)]
        both = h.get("final") is not None and t.get("final") is not None  # constant output: no NTIRE
        diff = f"{h['final'] - t['final']:+.4f}" if both else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {diff} |")
    return "\n".join(lines) + "\n"


def families_table(params: Params) -> str:
    """NTIRE score, SRCC and element accuracy per model in test, the held-out family and each
    check family (``styles.check_families``): the test split's pairs in each drawing."""
    ens = _load(Path("eval") / "ensemble" / "metrics.json")
    cols = [("test", "test"), ("heldout_style", "held-out")]
    cols += [(f"check_{f}", f) for f in params.styles.check_families if ens.get(f"check_{f}")]
    if len(cols) < 3:
        return "_Not measured: the data has no check family's set._\n"
    keys = (("final", "NTIRE"), ("srcc", "SRCC"), ("element_acc", "element acc"))
    head = [f"{name} {label}" for _, name in keys for _, label in cols]
    lines = ["| model | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    models = [(s, _load(Path("eval") / s / "metrics.json")) for s in params.backbones]
    for name, m in [*models, ("ensemble", ens)]:
        cells = [_f(m.get(split, {}).get(k), 3) for k, _ in keys for split, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def category_table(split: str = "test") -> str:
    """Element accuracy per category on ``split`` (``test`` or ``heldout_style``), per backbone
    and for the ensemble."""
    m = _load(Path("eval") / "ensemble" / "metrics.json")
    cats = (m if split == "test" else m.get(split, {})).get("category_accuracy", {}) if m else {}
    return _accuracy_grid(cats, "model")


def ensemble_gain() -> str:
    """The ensemble's NTIRE score minus the best single backbone's, with its bootstrap 95% CI."""
    g = _load(Path("eval") / "ensemble" / "metrics.json").get("vs_best_single")
    keys = ("ci_low", "ci_high", "ensemble_final", "best_single_final", "diff")
    if not g or any(g.get(k) is None for k in keys):  # no ranking at all: no interval to show
        return ""
    verdict = (
        "beats" if g["ci_low"] > 0 else ("is below" if g["ci_high"] < 0 else "is not distinguishable from")
    )
    return (
        f"\nEnsemble NTIRE {g['ensemble_final']:.4f} vs best single ({g['backbone']}) "
        f"{g['best_single_final']:.4f}: difference {g['diff']:+.4f}, paired bootstrap 95% CI "
        f"[{g['ci_low']:+.4f}, {g['ci_high']:+.4f}] ({g['bootstrap']} resamples of the "
        f"{g.get('prompts', '?')} test prompts): the ensemble {verdict} it.\n"
    )


def fitted_on(stack: StackConfig) -> str:
    """What the stacker's fit rows were, in words for the results page."""
    if stack.fit_on == "oof":
        return "out-of-fold predictions of the train split"
    k = stack.fit_styled
    return f"val and {k} redrawing{'s' if k > 1 else ''} of val in fine-tuning's styles" if k else "val"


def main(params: Params, *, write: bool = True) -> str:
    """Build the results page; write it to docs/results.md unless ``write`` is False."""
    text = (
        "# Results on SynthMuse (generated by `tokenfocus report`)\n\n"
        "Test split of `train_list.json` (grouped by prompt). Ceiling: SRCC between the noise-free\n"
        "alignment and the annotators' mean score on the same pairs (label noise bounds any scorer).\n\n"
        "## Backbones at the default budget\n\n"
        + backbone_table(params)
        + f"\n## Ensembles (fitted on {fitted_on(params.stack)}, measured on test)\n\n"
        + ensemble_table()
        + ensemble_gain()
        + "\n## Element accuracy per category (test)\n\n"
        + category_table()
        + "\n## A style family no model saw (`styles.heldout_family`)\n\n"
        "The test split's pairs again, each drawn scene redrawn in the held-out family: same\n"
        "prompts, elements and labels, pixels that neither pre-training nor fine-tuning drew.\n\n"
        + variant_table(params, "heldout_style", "held-out")
        + "\nElement accuracy per category, held-out family:\n\n"
        + category_table("heldout_style")
        + "\n## More families no model saw, drawn to check levers (`styles.check_families`)\n\n"
        "The test split's pairs again in each check family. A lever ships when it holds across\n"
        "all of them, not in the held-out family alone (docs/styles.md).\n\n"
        + families_table(params)
        + "\n## EvalMuse's short element keys\n\n"
        "The test split's pairs again, same images and labels, each compositional key\n"
        "(`red circles (color)`, `two circles (counting)`, `circle left of star (spatial)`) in\n"
        "EvalMuse's short form, a span of the prompt (`red (color)`, `two (counting)`, `left of\n"
        "(spatial)`); object keys are one noun in both, and a span two groups share keeps its long key.\n\n"
        + variant_table(params, "test_short", "short keys")
        + "\nElement accuracy per category, short keys:\n\n"
        + category_table("test_short")
        + "\n## Pre-trained tiny bases (checks on fresh scenes, never the benchmark's; 0.5 is chance)\n\n"
        + bases_table(params)
        + "\nThe focus-vs-lm loss study is in docs/loss-study.md (`scripts/loss_study.py`).\n"
    )
    if write:
        Path("docs").mkdir(exist_ok=True)
        Path("docs/results.md").write_text(text)
    return text
