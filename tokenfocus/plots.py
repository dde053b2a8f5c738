"""Figures for MLflow and data for ``dvc plots``: predicted vs human, per-category accuracy, and
SynthMuse's contact sheet."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from tokenfocus.evalmuse import parse_element_key, write_json_atomic


def category_accuracy(rows: list[dict], keep=None) -> dict[str, float]:
    """Element accuracy at 0.5 per EvalMuse category, over the keys ``keep(key)`` accepts (all)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        for k, g in (r.get("gt_elements") or {}).items():
            if g is not None and k in r["elements"] and (keep is None or keep(k)):
                cat = parse_element_key(k).category or "none"
                hits[cat].append((r["elements"][k] >= 0.5) == (g >= 0.5))
    return {c: sum(v) / len(v) for c, v in sorted(hits.items())}


def write_plot_data(rows: list[dict], out_dir: str | Path) -> dict[str, Path]:
    """JSON tables that ``dvc plots`` draws: scatter.json and category_accuracy.json."""
    out_dir = Path(out_dir)
    scatter = [
        {"human": r["gt_score"], "predicted": round(r["score"], 4)} for r in rows if r["gt_score"] is not None
    ]
    cats = [{"category": c, "accuracy": round(a, 4)} for c, a in category_accuracy(rows).items()]
    return {
        "scatter": write_json_atomic(out_dir / "scatter.json", scatter),
        "category_accuracy": write_json_atomic(out_dir / "category_accuracy.json", cats),
    }


def figures(rows: list[dict], title: str) -> dict[str, object]:
    """Matplotlib figures: scatter, per-category accuracy bars, score-distribution histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    lab = [r for r in rows if r["gt_score"] is not None]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter([r["gt_score"] for r in lab], [r["score"] for r in lab], s=6, alpha=0.5)
    ax.set(xlabel="human mean score", ylabel="predicted score", title=title, xlim=(1, 5), ylim=(1, 5))
    figs["scatter.png"] = fig
    cats = category_accuracy(rows)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(cats), list(cats.values()))
    ax.set(ylim=(0, 1), ylabel="element accuracy", title=title)
    figs["category_accuracy.png"] = fig
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist([r["score"] for r in rows], bins=30, range=(1, 5), alpha=0.6, label="predicted")
    if lab:
        ax.hist([r["gt_score"] for r in lab], bins=30, range=(1, 5), alpha=0.6, label="human")
    ax.legend()
    ax.set(xlabel="score", title=title)
    figs["score_histogram.png"] = fig
    return figs


def contact_sheet(root: Path, records: list[dict], cols: int = 4, cell: int = 160) -> Image.Image:
    """A grid of sample images with their prompts and mean scores, to look at."""
    rows = (len(records) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell * 2, rows * (cell + 60)), "white")
    d = ImageDraw.Draw(sheet)
    for i, r in enumerate(records):
        x, y = (i % cols) * cell * 2, (i // cols) * (cell + 60)
        img = Image.open(root / "images" / r["img_path"]).resize((cell, cell), Image.NEAREST)
        sheet.paste(img, (x + 4, y + 4))
        mean = sum(r["total_score"]) / len(r["total_score"])
        d.text((x + cell + 10, y + 8), f"{r['img_path']}\nscore {mean:.2f}", fill="black")
        words, lines, line = r["prompt"].split(), [], ""
        for w in words:
            if len(line) + len(w) > 44:
                lines.append(line)
                line = ""
            line += w + " "
        lines.append(line)
        d.text((x + 4, y + cell + 8), "\n".join(lines[:4]), fill="black")
        bad = [k for k, v in r["element_score"].items() if sum(v) * 2 < len(v)]
        d.text((x + cell + 10, y + 40), "missing:\n" + "\n".join(bad[:6]), fill="darkred")
    return sheet
