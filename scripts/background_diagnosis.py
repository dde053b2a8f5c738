"""Which of the held-out family's drawing choices breaks a base's count and shape checks (issue 23).

For each base: pre-training's yes/no count and shape checks (0.5 is chance) in the classic
drawing, in the held-out family's first style, in that style with one drawing choice put back to
the classic one, and in the classic drawing with one of the held-out style's choices added.
A diagnosis, not a lever: the held-out family stays out of every model's training.

    .venv/bin/python scripts/background_diagnosis.py models/base/fastvlm_gemma [more bases] [--out F]
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

from tokenfocus.backbones import load_model_and_processor  # noqa: E402
from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.env import torch_threads  # noqa: E402
from tokenfocus.pretrain.checks import check_accuracy  # noqa: E402
from tokenfocus.render import Style  # noqa: E402

#: The drawing choices compared, each as the fields it sets (an outline is a kind and a width).
CHOICES = {
    "background": ("background",),
    "fill": ("fill",),
    "outline": ("outline", "outline_width"),
    "scale": ("scale",),
    "rotation": ("rotation",),
    "blur": ("blur",),
    "vignette": ("vignette",),
}


def variants(heldout: Style) -> dict[str, Style]:
    """The classic drawing, the held-out style, and each one-choice step between them."""
    classic = Style()
    out = {"classic": classic, heldout.name: heldout}
    for choice, keys in CHOICES.items():
        out[f"{heldout.name}, classic {choice}"] = dataclasses.replace(
            heldout, **{k: getattr(classic, k) for k in keys}
        )
    for choice, keys in CHOICES.items():
        if any(getattr(heldout, k) != getattr(classic, k) for k in keys):
            out[f"classic + {heldout.name} {choice}"] = dataclasses.replace(
                classic, **{k: getattr(heldout, k) for k in keys}
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bases", nargs="+")
    ap.add_argument("--slug", default="fastvlm_gemma", help="whose params (family, image size) load them")
    ap.add_argument("--n", type=int, default=160, help="scenes per check")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    params = load_params()
    bb = params.backbone(args.slug)
    torch_threads(params.pretrain.threads)
    table = {}
    for base in args.bases:
        model, processor = load_model_and_processor(base, bb)
        model.eval()
        for name, style in variants(params.styles.book().heldout[0]).items():
            rates = check_accuracy(
                model, processor, bb.image_size, ["count", "shape"], n=args.n, seed=7, styles=(style,)
            )
            table.setdefault(base, {})[name] = rates
            print(f"{base}  {name}: {rates}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
