"""Empty scenes in every family: what each trained backbone answers when asked for a shape that is
not there (issue 23; docs/styles.md, "Where the held-out gap is lost").

Each scene is a fresh prompt scene with every group missing, so the image is the style's backdrop
and optics alone (the classic drawing: one flat colour); the prompt still names its shapes, as a
generator that drew nothing would be asked. Every shape's object question is asked on each image
through the pipeline's scorer. A backbone that says "yes" here reads a shape into the backdrop.

    .venv/bin/python scripts/blank_probe.py [--n 40]   # after `make run`; about ten seconds
    .venv/bin/python scripts/blank_probe.py --models models/base   # the pre-trained bases
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tokenfocus.config import GroundingConfig, load_params  # noqa: E402
from tokenfocus.render import SHAPES  # noqa: E402
from tokenfocus.render.draw import random_scene, render  # noqa: E402
from tokenfocus.render.styles import Style, StyleBook  # noqa: E402
from tokenfocus.synth.wording import make_prompt  # noqa: E402

SEED = 5  # not SynthMuse's (1234) nor pre-training's (99)


def blank_scenes(styles: tuple[Style, ...], n: int, size: int, seed: int = SEED) -> tuple[list, list[str]]:
    """``n`` images of fresh scenes with every group missing, each in one of ``styles``, and the
    prompts that name the shapes they do not show."""
    rng = random.Random(seed)
    images: list[Image.Image] = []
    prompts: list[str] = []
    for _ in range(n):
        scene = random_scene(rng)
        prompts.append(make_prompt(scene, rng, False))
        scene.missing = set(range(len(scene.groups)))
        images.append(render(scene, size, rng, rng.choice(styles)))
    return images, prompts


def model_dir(params, slug: str, models: Path | None) -> Path:
    """The folder a backbone is probed from: ``models/<slug>`` where a folder of models is given
    (``models/base``: the pre-trained bases), else the pipeline's fine-tuned model."""
    return models / slug if models is not None else ROOT / params.train.out / slug / "model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="empty scenes per family")
    ap.add_argument("--models", type=Path, help="a folder of <slug>/ models (default: the fine-tuned)")
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    book = StyleBook.from_config(params.styles)
    learned = [*params.styles.synth, *params.styles.pretrain, *params.styles.augment]
    families = {name: book.learned([name], "the training styles") for name in dict.fromkeys(learned)}
    families[f"{params.styles.heldout_family} (held-out)"] = book.heldout
    families.update({f"{fam} (check)": book.family(fam) for fam in params.styles.check_families})

    from tokenfocus.scoring import Scorer

    keys = [f"{shape} (object)" for shape in SHAPES]
    print("| backbone | drawing | mean P(yes) | share > 0.5 | " + " | ".join(SHAPES) + " |")
    print("|---" * (4 + len(SHAPES)) + "|")
    for slug, bb in params.backbones.items():
        scorer = Scorer.load(
            model_dir(params, slug, args.models),
            threads=params.score.threads,
            grounding=GroundingConfig(enabled=False),
        )
        for name, styles in families.items():
            images, prompts = blank_scenes(styles, args.n, bb.image_size or params.synth.image_size)
            got = scorer(images, prompts, [keys] * len(images))
            p = np.array([[r.elements[k] for k in keys] for r in got])
            cells = [f"{p.mean():.2f}", f"{(p > 0.5).mean():.2f}", *(f"{x:.2f}" for x in p.mean(0))]
            print(f"| {slug} | {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
