"""How a tiny base (or any scorer folder) fares in drawing styles it may never have seen (issue 23).

Per base: the pre-training checks (yes/no accuracy per attribute, element accuracy per category;
0.5 is chance) on fresh scenes drawn in the classic style, in the training styles
(`styles.pretrain`) and in the held-out family; and the behaviour probes of
tests/model/style_probes.py (style invariance, relation swap, count off by one).

    .venv/bin/python scripts/style_checks.py [models/base/fastvlm_gemma ...] [--out eval/style_checks.json]

``--served`` (after ``make run``): the probes alone on what is served, each fine-tuned backbone and
the ensemble's stacked element P(yes), through the bundle the registry serves.
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

from tests.model.style_probes import count_off_by_one, relation_swap, style_invariance  # noqa: E402
from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.env import torch_threads  # noqa: E402
from tokenfocus.pretrain.checks import check_accuracy, element_accuracy  # noqa: E402
from tokenfocus.scoring import Scorer  # noqa: E402


def measure(folder: str, params) -> dict:
    book = params.styles.book()
    scorer = Scorer.load(folder, params=str(ROOT / "params.yaml"))
    model, proc = scorer.model, scorer.processor
    out: dict = {"base": folder}
    for name, styles in (
        ("classic", (book.catalog["classic"],)),
        (
            "other styles",
            tuple(s for s in book.catalog.values() if not s.plain and s.family != book.heldout_family),
        ),
        ("held-out family", book.heldout),
    ):
        out[name] = {
            "checks": check_accuracy(
                model, proc, 64, ["shape", "color", "count", "size"], n=240, seed=101, styles=styles
            ),
            "elements": element_accuracy(model, proc, params.prompts, 64, n=240, seed=102, styles=styles),
        }
    out["probes"] = probes(scorer, params)
    return out


def probes(scorer, params) -> dict:
    """The three behaviour probes of tests/model/style_probes.py on ``scorer``."""
    book = params.styles.book()
    styles = [book.catalog["classic"], book.catalog["mixed"], book.heldout[0]]
    return {
        "invariance": style_invariance(scorer, styles),
        "relation_swap": relation_swap(scorer),
        "count_off_by_one": count_off_by_one(scorer),
    }


def served(params) -> list[dict]:
    """The probes on each fine-tuned backbone and on the ensemble, as the registry bundles them."""
    import tempfile
    from types import SimpleNamespace

    from tokenfocus.serving.ensemble import EnsembleScorer, bundle

    with tempfile.TemporaryDirectory() as tmp:
        ens = EnsembleScorer(bundle(params, Path(tmp) / "bundle"))
        rows = [{"base": f"fine-tuned {s}", "probes": probes(sc, params)} for s, sc in ens.scorers.items()]

        def stacked(images, prompts, keys):
            return [SimpleNamespace(elements=r["element_scores"]) for r in ens(images, prompts, keys)]

        rows.append({"base": "ensemble", "probes": probes(stacked, params)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bases", nargs="*")
    ap.add_argument("--out", default="eval/style_checks.json")
    ap.add_argument(
        "--served", action="store_true", help="the probes on the fine-tuned backbones and ensemble"
    )
    a = ap.parse_args()
    if a.served and a.bases:  # the served models are the pipeline's own: a folder named would be ignored
        ap.error(f"--served probes the pipeline's fine-tuned models and ensemble; drop the folders {a.bases}")
    torch_threads(2)
    params = load_params(ROOT / "params.yaml")
    bases = a.bases or [bb.source for bb in params.backbones.values() if bb.family]
    rows = served(params) if a.served else [measure(b, params) for b in bases]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
    checked = [r for r in rows if "classic" in r]  # --served measures the probes alone
    if checked:
        print(
            "| base | drawn in | check shape | colour | count | size | element object | counting | spatial |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
    for r in checked:
        for name in ("classic", "other styles", "held-out family"):
            c, e = r[name]["checks"], r[name]["elements"]
            print(
                f"| {r['base']} | {name} | {c['shape']:.3f} | {c['color']:.3f} | {c['count']:.3f} | {c['size']:.3f} | "
                f"{e.get('object', float('nan')):.3f} | {e.get('counting', float('nan')):.3f} | {e.get('spatial', float('nan')):.3f} |"
            )
    print("\n| base | invariance classic / mixed / held-out / all three | relation swap | count off by one |")
    print("|---|---|---|---|")
    for r in rows:
        p = r["probes"]
        inv = p["invariance"]
        print(
            f"| {r['base']} | {inv['classic']:.3f} / {inv['mixed']:.3f} / {inv['studio']:.3f} / {inv['all']:.3f} | "
            f"{p['relation_swap']:.3f} | {p['count_off_by_one']:.3f} |"
        )


if __name__ == "__main__":
    main()
