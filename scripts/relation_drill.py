"""Can a pre-trained tiny base learn to read a relation when drilled on it? (issue 23, section 4)

Continues a base's element stage (stage 3 of tokenfocus/pretrain) for ``--steps`` more steps,
with a share of each batch's element rows replaced by *relation pairs*: a fresh scene of two or
three groups, drawn once in a pre-training style, asked its spatial element in the scoring wording
twice, with the true relation ("circle left of star": yes) and with it turned round in the prompt
and the key ("circle right of star": no). Only the image tells the two apart, and they stand side
by side in the batch: the contrast the relation-swap probe asks (tests/model/style_probes.py),
taught directly. ``--share 0`` is the control: the same continuation without the pairs.

Writes the continued base to ``--out`` (with a ``drill`` block in its tokenfocus.json) and prints
the pre-training checks and the probes. It never writes the shipped bases, and no pipeline stage
depends on it (docs/styles.md, "A relation drill in the scoring wording").

    .venv/bin/python scripts/relation_drill.py --share 0.5 --out /tmp/gemma_drill \
        [--base models/base/fastvlm_gemma] [--steps 2000] [--tower-lr-scale 0.1] [--clean]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()

import torch  # noqa: E402

from tests.model.style_probes import count_off_by_one, relation_swap  # noqa: E402
from tokenfocus.backbones import META_FILE, load_model_and_processor, save_model  # noqa: E402
from tokenfocus.config import GroundingConfig, load_params  # noqa: E402
from tokenfocus.env import torch_threads  # noqa: E402
from tokenfocus.pretrain import stages  # noqa: E402
from tokenfocus.pretrain.checks import check_accuracy, element_accuracy  # noqa: E402
from tokenfocus.pretrain.curriculum import fresh_scene  # noqa: E402
from tokenfocus.prompts import element_text  # noqa: E402
from tokenfocus.render import RELATIONS, pick_style, render  # noqa: E402
from tokenfocus.scoring import Scorer  # noqa: E402
from tokenfocus.synth import elements_of, make_prompt  # noqa: E402


def relation_pairs(
    rows, step_seed: int, n_pairs: int, first: int, parts, prompts, size: int, styles, *, clean: bool = False
):
    """Replace ``2 * n_pairs`` rows from ``first`` on by relation pairs (true: yes, turned: no).

    ``clean``: the simplest case instead, two single large shapes in the classic drawing (the
    relation-swap probe's own scenes)."""
    texts, answers, images, scenes = rows
    rng = random.Random(step_seed * 7 + 3)
    for j in range(n_pairs):
        scene = fresh_scene(rng, 2 if clean else 3)
        while not scene.relation or (clean and len(scene.groups) != 2):
            scene = fresh_scene(rng, 2 if clean else 3)
        if clean:
            for g in scene.groups:
                g.count, g.size = 1, "large"
        image = render(scene, size, rng, None if clean else pick_style(styles, rng))
        real, wording = rng.random() < 0.5, rng.randrange(1 << 30)  # one wording for both
        for k, rel in enumerate((scene.relation, RELATIONS[scene.relation])):
            told = dataclasses.replace(scene, relation=rel)
            key = next(k for k, category, *_ in elements_of(told) if category == "spatial")
            i = first + 2 * j + k
            texts[i] = element_text(parts, prompts, make_prompt(told, random.Random(wording), real), key)
            answers[i], images[i], scenes[i] = ("yes", "no")[k], image, scene
    return texts, answers, images, scenes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="models/base/fastvlm_gemma")
    ap.add_argument("--slug", default="fastvlm_gemma")
    ap.add_argument("--share", type=float, default=0.5, help="element rows asked as relation pairs")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--tower-lr-scale", type=float, default=0.0, help="> 0: the tower trains too")
    ap.add_argument("--clean", action="store_true", help="pairs of two single large shapes, classic")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    bb, cfg = params.backbone(args.slug), params.pretrain_for(args.slug)
    if args.tower_lr_scale > 0:
        cfg = dataclasses.replace(cfg, freeze_tower=False, tower_lr_scale=args.tower_lr_scale)
    prompts, styles = params.prompts_for(args.slug), params.styles.book().styles("pretrain")
    model, proc = load_model_and_processor(ROOT / args.base, bb, slug=args.slug)
    proc.tokenizer.padding_side = "left"
    torch_threads(1)
    torch.manual_seed(cfg.seed)
    plain = stages._rows

    def rows(rng, step_seed, cfg, parts, prompts, size, element_frac, open_frac, styles=None):
        out = plain(rng, step_seed, cfg, parts, prompts, size, element_frac, open_frac, styles)
        first, n_elem = round(cfg.batch_size * open_frac), round(cfg.batch_size * element_frac)
        n_pairs = int(n_elem * args.share) // 2
        return relation_pairs(out, step_seed, n_pairs, first, parts, prompts, size, styles, clean=args.clean)

    cpu0 = time.process_time()
    stages._rows = rows  # the element stage's batches, with the pairs in place of element rows
    try:
        report = stages.question_stage(
            model,
            proc,
            family=bb.family,
            cfg=cfg,
            prompts=prompts,
            image_size=bb.image_size,
            steps=args.steps,
            element_frac=cfg.element_frac,
            open_frac=(1 - cfg.element_frac) * cfg.open_frac,
            name="elements",
            slug=args.slug,
            styles=styles,
            attempt=3,  # scenes other than the base's own element stage drew
        )
    finally:
        stages._rows = plain
    meta = json.loads((ROOT / args.base / META_FILE).read_text())
    meta["drill"] = {
        "share": args.share,
        "steps": args.steps,
        "tower_lr_scale": args.tower_lr_scale,
        "clean": args.clean,
        "stage": report,
        "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
        "check_accuracy": check_accuracy(
            model, proc, bb.image_size, cfg.attributes, max_groups=3, n=240, seed=cfg.seed + 2
        ),
        "element_accuracy": element_accuracy(model, proc, prompts, bb.image_size, n=240, seed=cfg.seed + 3),
    }
    save_model(model, proc, meta, args.out)
    # the drill measures the model's own answer to a relation question, not the grounded reading
    scorer = Scorer.load(args.out, params=str(ROOT / "params.yaml"), grounding=GroundingConfig(enabled=False))
    meta["drill"]["probes"] = {
        "relation_swap": relation_swap(scorer),
        "relation_swap_256": relation_swap(scorer, n=256, seed=77),
        "count_off_by_one": count_off_by_one(scorer),
    }
    (Path(args.out) / META_FILE).write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta["drill"], indent=1))


if __name__ == "__main__":
    main()
