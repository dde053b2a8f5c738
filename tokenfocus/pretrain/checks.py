"""What a pre-trained base can tell, on other fresh scenes: yes/no accuracy per attribute and
element accuracy per category, written into the base's ``tokenfocus.json``."""

from __future__ import annotations

import random

import torch
from PIL import Image

from tokenfocus.backbones import template_parts
from tokenfocus.config import PromptConfig
from tokenfocus.pretrain.curriculum import ElementQuestion, Pool, element_question, question
from tokenfocus.pretrain.views import part_question
from tokenfocus.render import Style
from tokenfocus.scoring import encode, first_answer_logits
from tokenfocus.views import Box


def yes_margins(model, processor, texts: list[str], images: list[Image.Image]) -> list[float]:
    tok = processor.tokenizer
    tok.padding_side = "left"
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    out: list[float] = []
    for b in range(0, len(texts), 48):
        logits = first_answer_logits(model, encode(processor, texts[b : b + 48], images[b : b + 48]))
        out += (logits[:, yes] - logits[:, no]).tolist()
    return out


def _rate(hits: dict[str, list[bool]]) -> dict[str, float]:
    out = {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}
    out["all"] = round(sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values()), 3)
    return out


@torch.inference_mode()
def check_accuracy(
    model,
    processor,
    image_size: int,
    attributes: list[str],
    *,
    max_groups: int = 3,
    n: int = 240,
    seed: int = 0,
    styles: tuple[Style, ...] | None = None,
) -> dict[str, float]:
    """Yes/no accuracy per attribute on ``n`` fresh scenes per attribute drawn in ``styles``
    (default classic), half of the claims true and half false (so 0.5 is chance), plus ``all``."""
    parts = template_parts(processor)
    hits: dict[str, list[bool]] = {}
    for a, kind in enumerate(dict.fromkeys(attributes)):
        pool = Pool.draw(n, image_size, seed * 101 + a, max_groups=max_groups, styles=styles)
        rng = random.Random(seed + a)
        usable = [i for i, s in enumerate(pool.scenes) if kind != "relation" or s.relation]
        qs = [
            question(pool.scenes[i], [kind], rng, mode="check", truth=j % 2 == 0)
            for j, i in enumerate(usable)
        ]
        margins = yes_margins(
            model, processor, [parts.head + q.text + parts.tail for q in qs], [pool.images[i] for i in usable]
        )
        hits[kind] = [(m > 0) == q.truth for m, q in zip(margins, qs, strict=True)]
    return _rate(hits)


@torch.inference_mode()
def element_hits(
    model,
    processor,
    prompts: PromptConfig,
    image_size: int,
    *,
    n: int = 240,
    seed: int = 0,
    styles: tuple[Style, ...] | None = None,
    bind_shape: bool = True,
) -> list[tuple[str, bool, bool]]:
    """(category, realised, answered right by P(yes) > 0.5) for each of ``n`` elements asked in
    the scoring wording about fresh scenes drawn with errors in ``styles`` (default classic), half
    of them realised (labelled with ``bind_shape``, :func:`tokenfocus.synth.realised`)."""
    parts, rng = template_parts(processor), random.Random(seed)
    qs = [
        element_question(
            rng, parts, prompts, image_size, want=i % 2 == 0, styles=styles, bind_shape=bind_shape
        )
        for i in range(n)
    ]
    return _answered(model, processor, qs)


def _answered(model, processor, qs: list[ElementQuestion]) -> list[tuple[str, bool, bool]]:
    """(category, realised, answered right by P(yes) > 0.5) of each question."""
    margins = yes_margins(model, processor, [q.text for q in qs], [q.image for q in qs])
    return [
        (q.category, q.answer == "yes", (m > 0) == (q.answer == "yes"))
        for m, q in zip(margins, qs, strict=True)
    ]


def element_accuracy(model, processor, prompts: PromptConfig, image_size: int, **kw) -> dict[str, float]:
    """Accuracy of element P(yes) > 0.5 per category and ``all`` (see :func:`element_hits`; 0.5 is
    chance over all, not within a category, whose elements are mostly realised or mostly not)."""
    return _by_category(element_hits(model, processor, prompts, image_size, **kw))


def _by_category(answered: list[tuple[str, bool, bool]]) -> dict[str, float]:
    hits: dict[str, list[bool]] = {}
    for category, _, right in answered:
        hits.setdefault(category, []).append(right)
    return _rate(hits)


@torch.inference_mode()
def part_accuracy(
    model,
    processor,
    prompts: PromptConfig,
    image_size: int,
    boxes: list[Box],
    *,
    n: int = 240,
    seed: int = 0,
    styles: tuple[Style, ...] | None = None,
) -> dict[str, float]:
    """Accuracy of P(yes) > 0.5 on ``n`` questions about one of ``boxes`` of fresh scenes in
    ``styles`` (default classic), half of them true, per kind (``part object``, ``part count``)
    and ``all`` (:func:`~tokenfocus.pretrain.views.part_question`)."""
    parts, rng = template_parts(processor), random.Random(seed)
    qs = [
        part_question(rng, parts, prompts, image_size, boxes, want=i % 2 == 0, styles=styles)
        for i in range(n)
    ]
    return _by_category(_answered(model, processor, qs))


def balanced_accuracy(hits: list[tuple[str, bool, bool]], category: str) -> float:
    """The mean of one category's accuracy on realised and on unrealised elements: 0.5 for a model
    that answers one way whatever it sees (the plain accuracy of "yes" everywhere is the share of
    realised elements, 0.58 for objects)."""
    rates = []
    for realised in (True, False):
        right = [r for c, y, r in hits if c == category and y == realised]
        rates.append(sum(right) / len(right) if right else 0.0)
    return sum(rates) / 2
