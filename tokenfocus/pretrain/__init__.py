"""Vision-language pre-training of a tiny base: what a real LVLM brings before fine-tuning.

A real checkpoint has seen captions and visual questions before anyone fine-tunes it on
alignment scores. A tiny randomly initialised instance has not, and measurably cannot learn to
bind words to pixels from 2,800 noisy alignment scores (docs/tiny-backbones.md). So the
``pretrain@<slug>`` stage turns the random base of ``build@<slug>`` into a pre-trained one, on
freshly drawn scenes from its own seed. It never reads the benchmark's images, labels, latent
alignment, element weights or annotator model: it teaches what is in an image, never a score.

The curriculum (measured in shared/reference/pretraining-study, run "D"):

1. **Tower.** The vision tower alone learns, through throw-away linear heads, what its scenes
   hold: per shape its count (0 = absent), colour and size on 1-3 group scenes
   (``tower_groups``; 1 = the shape, colour, count and size of a one-group scene), the analogue
   of a vision encoder that arrives pre-trained. Through the language model alone, the tower
   learns shapes far too slowly.
2. **Pairs.** With the tower frozen (a trainable one forgets colour while it learns shape),
   open questions ("what color are the stars ?") and yes/no checks on 1-3 group scenes, each
   checked image asked with its true and a false value in the same batch, attributes
   round-robin within a batch. An auxiliary loss ties each attribute word's input embedding to
   the projected image tokens (max cosine similarity as a presence logit): it is what moves
   shape and colour off chance with a frozen tower.
3. **Elements.** The same mix with half of the rows asked as element questions in the scoring
   wording (``prompts.element_context`` + ``prompts.element``, the same templates the scorer
   uses), about fresh scenes drawn with errors: what pre-training teaches is what scoring asks.

With ``stage_floor`` > 0, stages 2 and 3 are guarded (:func:`guarded`): a stage whose easiest
measure ends below the floor broke, and runs again from its starting weights on other scenes.

Per-attribute check accuracy and per-category element accuracy on other fresh scenes go into
the base's ``tokenfocus.json``.

Rooms: :mod:`.curriculum` (scenes and questions), :mod:`.parts` (the model's parts it touches),
:mod:`.stages` (the three training stages), :mod:`.checks` (what the base can tell afterwards).
``pretrain_base`` is the one entry point.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tokenfocus.backbones import META_FILE, load_model_and_processor, save_model
from tokenfocus.config import BackboneConfig, ConfigError, PretrainConfig, PromptConfig
from tokenfocus.env import torch_threads
from tokenfocus.gemm import products
from tokenfocus.pretrain.checks import (
    balanced_accuracy,
    check_accuracy,
    element_accuracy,
    element_hits,
    part_accuracy,
)
from tokenfocus.pretrain.curriculum import check_config, corpus
from tokenfocus.pretrain.stages import question_stage, tower_stage
from tokenfocus.render import Style
from tokenfocus.tiny import init_dir
from tokenfocus.views import Box, count_boxes

__all__ = ["check_config", "corpus", "guarded", "pretrain", "pretrain_base"]

log = logging.getLogger(__name__)


def pretrain(
    model,
    processor,
    cfg: PretrainConfig,
    image_size: int,
    *,
    family: str,
    prompts: PromptConfig | None = None,
    slug: str = "",
    styles: tuple[Style, ...] | None = None,
    tower_styles: tuple[Style, ...] | None = None,
    boxes: list[Box] | None = None,
) -> dict:
    """Run the curriculum on ``model`` in place.

    Args:
        model: a tiny base of a family whose tower and projector ``tiny_families.yaml`` names.
        processor: its processor.
        cfg: the curriculum (see :class:`~tokenfocus.config.PretrainConfig`).
        image_size: the side the scenes are rendered at.
        family: the tiny family, to find the tower and projector.
        prompts: the scoring templates stage 3 asks elements in.
        slug: for messages.
        styles: the styles every scene is drawn in, one per image (domain randomisation);
            default the classic drawing. (How a base fares in other styles, the held-out family
            included, is measured apart: ``scripts/style_checks.py``.)
        tower_styles: the styles stage 1 alone draws in; default ``styles``.
        boxes: the parts of an image the scorer reads counts from
            (:func:`tokenfocus.views.count_boxes`), which ``cfg.part_frac`` of stage 3's element
            questions are asked about.

    Returns:
        Per stage ``steps``/``first_loss``/``last_loss``/``cpu_minutes``, the total
        ``cpu_minutes``, ``check_accuracy`` per attribute and ``element_accuracy`` per category,
        both on other fresh scenes in the classic drawing (0.5 is chance).
    """
    check_config(cfg)
    if cfg.part_frac > 0 and not boxes:
        raise ConfigError("pretrain.part_frac: no parts of the image to ask about (boxes)")
    prompts = prompts or PromptConfig()
    torch_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    processor.tokenizer.padding_side = "left"
    # the whole curriculum, checks included, on one BLAS: another one sums in another order
    with products(cfg.gemm, cfg.threads):
        return _curriculum(
            model, processor, cfg, image_size, family, prompts, slug, styles, tower_styles, boxes
        )


def _curriculum(
    model, processor, cfg, image_size, family, prompts, slug, styles, tower_styles, boxes
) -> dict:
    """:func:`pretrain`'s stages and checks, once its threads, seed and BLAS are set."""
    cpu0 = time.process_time()
    stages, heads = {}, None
    if cfg.tower_steps:
        stages["tower"], heads = tower_stage(
            model, processor, family, cfg, image_size, slug=slug, styles=tower_styles or styles
        )
    common = {"family": family, "cfg": cfg, "prompts": prompts, "image_size": image_size, "slug": slug}
    common |= {"styles": styles, "boxes": boxes if cfg.part_frac > 0 else None}
    common["heads"] = heads  # kept as a loss in stages 2-3 when tower_head_weight > 0
    asked = {"n": cfg.check_scenes, "bind_shape": cfg.bind_shape}  # the element checks, labelled as stage 3
    if cfg.steps:
        stages["pairs"] = guarded(
            model,
            lambda attempt: question_stage(
                model,
                processor,
                **common,
                steps=cfg.steps,
                element_frac=0.0,
                open_frac=cfg.open_frac,
                name="pairs",
                attempt=attempt,
            ),
            # the checks every base answers once its pairs stage worked (0.87-1.00 in the shipped bases)
            lambda: min(
                check_accuracy(model, processor, image_size, [a], n=cfg.check_scenes // 2, seed=cfg.seed + 4)[
                    a
                ]
                for a in ("shape", "color")
            ),
            cfg,
            f"{slug} pairs",
        )
    if cfg.element_steps:
        stages["elements"] = guarded(
            model,
            lambda attempt: question_stage(
                model,
                processor,
                **common,
                steps=cfg.element_steps,
                element_frac=cfg.element_frac,
                # the rest of the batch keeps the pairs stage's open : check ratio
                open_frac=(1 - cfg.element_frac) * cfg.open_frac,
                name="elements",
                attempt=attempt,
            ),
            # balanced, so that answering "yes" to every object (58% of them realised) scores 0.5
            lambda: balanced_accuracy(
                element_hits(model, processor, prompts, image_size, **asked, seed=cfg.seed + 5),
                "object",
            ),
            cfg,
            f"{slug} elements",
        )
    out = {
        "stages": stages,
        "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
        "check_accuracy": check_accuracy(
            model,
            processor,
            image_size,
            cfg.attributes,
            max_groups=cfg.max_groups,
            n=cfg.check_scenes,
            seed=cfg.seed + 2,
        ),
        "element_accuracy": element_accuracy(
            model, processor, prompts, image_size, **asked, seed=cfg.seed + 3
        ),
    }
    if common["boxes"]:  # what the scorer asks a part: its object, and one .. four of it
        out["part_accuracy"] = part_accuracy(
            model, processor, prompts, image_size, boxes, n=cfg.check_scenes, seed=cfg.seed + 6
        )
    log.info(
        "%s: pre-trained, %.2f CPU-min, checks %s, elements %s",
        slug,
        out["cpu_minutes"],
        out["check_accuracy"],
        out["element_accuracy"],
    )
    return out


def guarded(
    model, run: Callable[[int], dict], measure: Callable[[], float], cfg: PretrainConfig, name: str
) -> dict:
    """Run a stage (``run(attempt)``) and, with ``cfg.stage_floor`` > 0, measure it: below the
    floor the stage broke, and it runs again from its starting weights on other scenes, up to
    ``cfg.stage_retries`` times. The best attempt's weights are kept.

    Why: with the token heads, 4 of 10 pre-training runs broke in a language-model stage (object
    elements 0.50-0.62 against 0.82-0.97), each with a tower as good as the others'. A bad draw of
    a stage's scenes is mended by drawing them anew; a weakness of the recipe is not (Qwen2 with
    the token heads measured 0.719 on both attempts), and the report shows which (docs/styles.md).

    Returns:
        The stage's report, with ``guard`` (the measure per attempt) when guarded.
    """
    if cfg.stage_floor <= 0:
        return run(0)

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    start, measures, best = snapshot(), [], None  # best: (measure, attempt, report, weights)
    for attempt in range(cfg.stage_retries + 1):
        if attempt:
            model.load_state_dict(start)
        report = run(attempt)
        measures.append(round(measure(), 3))
        if measures[-1] >= cfg.stage_floor:
            return report | {"guard": measures, "kept_attempt": attempt + 1}
        log.warning(
            "%s: attempt %d measured %.3f < floor %.3f", name, attempt + 1, measures[-1], cfg.stage_floor
        )
        if best is None or measures[-1] > best[0]:
            best = (measures[-1], attempt, report, snapshot())
    _, attempt, report, weights = best
    model.load_state_dict(weights)
    return report | {"guard": measures, "kept_attempt": attempt + 1}


def pretrain_base(
    slug: str, params, *, init: str | Path | None = None, out: str | Path | None = None
) -> Path | None:
    """The ``pretrain@<slug>`` stage: load the random base, run the curriculum, save the base.

    Args:
        slug: the backbone; a real checkpoint (no ``family``) arrives pre-trained and is skipped.
        params: the project params.
        init: the random base (default ``<pretrain init folder>/<slug>``, from ``build@<slug>``).
        out: where the pre-trained base goes (default the backbone's ``source``); written in
            full before it replaces an old one.

    Returns:
        The base's folder, or None for a real checkpoint.
    """
    bb: BackboneConfig = params.backbone(slug)
    if not bb.family:
        log.info("%s: %s arrives pre-trained (no tiny family)", slug, bb.source)
        return None
    init = Path(init or init_dir(slug, params))
    out = Path(out or bb.source)
    cfg = params.pretrain_for(slug)
    check_config(cfg)
    book = params.styles.book()  # checked before the long run: no held-out style may train
    styles = (
        book.learned(cfg.styles, f"backbones.{slug}.pretrain.styles")
        if cfg.styles
        else book.styles("pretrain")
    )
    tower_styles = (
        book.learned(cfg.tower_styles, f"backbones.{slug}.pretrain.tower_styles")
        if cfg.tower_styles
        else None
    )
    model, processor = load_model_and_processor(init, dataclasses.replace(bb, source=str(init)), slug=slug)
    meta = json.loads((init / META_FILE).read_text())
    if cfg.steps or cfg.tower_steps or cfg.element_steps:
        meta["pretrain"] = pretrain(
            model,
            processor,
            cfg,
            bb.image_size,
            family=bb.family,
            prompts=params.prompts_for(slug),
            slug=slug,
            styles=styles,
            tower_styles=tower_styles,
            # the parts the scorer reads counts from: a base asked about them before it is scored
            boxes=count_boxes(params.score.grounding.cuts, params.score.grounding.count_grid),
        )
    meta["kind"] = "base"
    return save_model(model, processor, meta, out)
