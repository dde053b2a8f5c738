"""How a tiny base (or any scorer folder) fares in drawing styles it may never have seen (issue 23).

Per base: the pre-training checks (yes/no accuracy per attribute, element accuracy per category;
0.5 is chance) on fresh scenes drawn in the classic style, in the training styles
(`styles.pretrain`) and in the held-out family; and the behaviour probes of
tests/model/style_probes.py (style invariance, relation swap, count off by one).

    .venv/bin/python scripts/style_checks.py [models/base/fastvlm_gemma ...] [--out eval/style_checks.json]
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
    probes = [book.catalog["classic"], book.catalog["mixed"], book.heldout[0]]
    out["probes"] = {
        "invariance": style_invariance(scorer, probes),
        "relation_swap": relation_swap(scorer),
        "count_off_by_one": count_off_by_one(scorer),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bases", nargs="*")
    ap.add_argument("--out", default="eval/style_checks.json")
    a = ap.parse_args()
    torch_threads(2)
    params = load_params(ROOT / "params.yaml")
    bases = a.bases or [bb.source for bb in params.backbones.values() if bb.family]
    rows = [measure(b, params) for b in bases]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
    print("| base | drawn in | check shape | colour | count | size | element object | counting | spatial |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
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
