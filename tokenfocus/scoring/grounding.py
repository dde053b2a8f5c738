"""Spatial elements read from where their objects stand, not from the relation question.

Measured (docs/styles.md): asked "Does the image show circle left of star ?", the tiny backbones
answer near chance (spatial AUC 0.55-0.70), while they tell whether a circle is in the image at
0.92-1.00. So a spatial element ``A <relation> B`` is scored from object questions alone:

1. Each object is asked on the whole image (the pair's own object answers where it has them).
2. The image is cut across the relation's axis (``cuts``: at a third and two thirds). Each object is
   asked on the part on the relation's side of the cut (the rest filled with the image's median
   colour: its background, mostly) and on the other part. Where an object stands is the
   difference of its two answers, in -1..1, averaged over the cuts.
3. P(yes) = min(P(A), P(B), sigmoid(steepness * (where A stands - where B stands))): both objects
   drawn, and ``A`` further towards the relation's side than ``B``.

Keys in EvalMuse's short form (``left of (spatial)``) name no object: the pair's object elements
nearest before and after the relation words in the prompt stand in. A key that names no relation
of ``GroundingConfig.relations``, or whose objects cannot be found, keeps the question's answer.

Counting elements are read from parts of the image too, in bands between the same cuts, across
and down, and in cells (:mod:`tokenfocus.scoring.counting`); the views a pair's relation and counts
share are drawn and asked once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tokenfocus.config import GroundingConfig
from tokenfocus.evalmuse import parse_element_key
from tokenfocus.scoring.counting import (
    Count,
    count_keys,
    counted_probability,
    find_word,
    object_mentions,
    parse_count,
)
from tokenfocus.views import box_view
from tokenfocus.views import canvas as _canvas
from tokenfocus.views import kept as _kept

OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


@dataclass(frozen=True)
class Relation:
    """A spatial element's two objects and the half of the image its first one stands in."""

    first: str
    second: str
    side: str


def parse_relation(key: str, prompt: str, keys: list[str], cfg: GroundingConfig) -> Relation | None:
    """The objects and side of a spatial element, or None where it cannot be grounded.

    Args:
        key: the element key, ``"circle left of star (spatial)"`` or ``"left of (spatial)"``.
        prompt: the pair's prompt, where a short key's objects are looked up.
        keys: the pair's element keys; those of ``cfg.object_categories`` name its objects.
        cfg: the relation phrases and categories.
    """
    el = parse_element_key(key)
    if el.category not in cfg.categories:
        return None
    for phrase in sorted(cfg.relations, key=len, reverse=True):  # "to the left of" before "left of"
        m = find_word(phrase, el.text)
        if not m:
            continue
        first, second = el.text[: m.start()].strip(), el.text[m.end() :].strip()
        if first and second:
            return Relation(first, second, cfg.relations[phrase])
        where = find_word(phrase, prompt)
        if not where:
            return None
        objects = [
            e.text for e in map(parse_element_key, keys) if e.category in cfg.object_categories and e.text
        ]
        spans = object_mentions(prompt, objects)
        before = [s for s in spans if s[1] <= where.start()]
        after = [s for s in spans if s[0] >= where.end()]
        if not before or not after:
            return None
        a, b = max(before)[2], min(after)[2]
        return Relation(a, b, cfg.relations[phrase]) if a != b else None
    return None


def part_view(
    image: Image.Image,
    side: str,
    cut: float,
    keep_side: bool,
    *,
    canvas: tuple[np.ndarray, np.ndarray] | None = None,
) -> Image.Image:
    """The image with one part kept: the part within ``cut`` (a fraction of the image) of its
    ``side`` edge, or with ``keep_side`` False the rest. What is hidden is filled with the image's
    median colour. ``canvas`` (:func:`_canvas` of the image) saves converting it for every view."""
    pixels, fill = canvas if canvas is not None else _canvas(image)
    h, w = pixels.shape[:2]
    n = w if side in ("left", "right") else h
    at = round(cut * n) if side in ("left", "top") else n - round(cut * n)  # the cut's pixel index
    near_start = side in ("left", "top")  # the side's part is [0, at) where the side is left or top
    keep = slice(0, at) if near_start == keep_side else slice(at, None)
    return _kept((pixels, fill), *((slice(None), keep) if side in ("left", "right") else (keep, slice(None))))


def grounded_probability(
    present: tuple[float, float],
    on_side: list[tuple[float, float]],
    opposite: list[tuple[float, float]],
    steepness: float,
) -> float:
    """P(yes) of ``first <relation> second`` from the objects' answers, each a (first, second)
    pair: on the whole image, and per cut on the part on the relation's side and on the rest."""
    where = [sum(s[j] - o[j] for s, o in zip(on_side, opposite, strict=True)) / len(on_side) for j in (0, 1)]
    relation = 1.0 / (1.0 + math.exp(-steepness * (where[0] - where[1])))
    return min(present[0], present[1], relation)


def _object_key(obj: str) -> str:
    return f"{obj} (object)"  # the question asks the text alone: "Does the image show circle ?"


def ground(
    ask: Callable[[list[Image.Image], list[str], list[list[str]]], list[dict[str, float]]],
    images: list[Image.Image],
    prompts: list[str],
    elements: list[list[str]],
    probs: list[dict[str, float]],
    cfg: GroundingConfig,
    *,
    pairs_at_a_time: int = 32,
) -> int:
    """Replace, in ``probs``, the P(yes) of every spatial element that can be grounded, and of
    every counting element that can be read from the parts (:mod:`tokenfocus.scoring.counting`).

    Args:
        ask: the scorer's element questions, ``(images, prompts, keys) -> P(yes) per key``.
        images, prompts, elements: the pairs, as scored.
        probs: their element P(yes) from the questions, changed in place.
        cfg: the relations, number words and categories.
        pairs_at_a_time: pairs whose views are drawn and asked together (each pair has up to
            a dozen or so views at the defaults: memory stays bounded on large images).

    Returns:
        How many elements were grounded.
    """
    items = []  # (pair, key, Relation or Count)
    for i, keys in enumerate(elements):
        for k in keys:
            if k not in probs[i]:
                continue
            found = parse_relation(k, prompts[i], keys, cfg) or parse_count(k, prompts[i], keys, cfg)
            if found:
                items.append((i, k, found))
    # the items come in pair order: a run of consecutive items per pair, chunked a few pairs at a time
    by_pair = [list(run) for _, run in itertools.groupby(items, key=lambda it: it[0])]
    step = max(1, pairs_at_a_time)
    for start in range(0, len(by_pair), step):
        _ground_some(
            ask, images, prompts, probs, [it for run in by_pair[start : start + step] for it in run], cfg
        )
    return len(items)


def _ground_some(ask, images, prompts, probs, items, cfg: GroundingConfig) -> None:
    """:func:`ground` for some pairs' items, their views asked in one call."""
    # one question list per view (pair, edge, cut, which part; None = the whole image), each
    # question asked once a view: "left of" and "right of" share their views, cut from the left
    # edge, and a count's views across are a left-right relation's
    views: dict[tuple, dict[str, None]] = {}
    answered = {i: {parse_element_key(k).text: p for k, p in probs[i].items()} for i, _, _ in items}
    for i, _, it in items:
        if isinstance(it, Count):
            for view in dict.fromkeys(v for parts in _count_splits(i, cfg) for v in parts):
                views.setdefault(view, {}).update(dict.fromkeys(count_keys(it, cfg)))
            continue
        for view in _views(i, it.side, cfg.cuts):
            views.setdefault(view, {}).update(dict.fromkeys(map(_object_key, (it.first, it.second))))
        missing = [o for o in (it.first, it.second) if o not in answered[i]]
        if missing:
            views.setdefault((i, None), {}).update(dict.fromkeys(map(_object_key, missing)))
    order = list(views)
    canvases = {i: _canvas(images[i]) for i in dict.fromkeys(i for i, _, _ in items)}  # once a pair
    got = ask(
        [_draw(v, images[v[0]], canvases[v[0]]) for v in order],
        [prompts[v[0]] for v in order],
        [list(views[v]) for v in order],
    )
    seen = dict(zip(order, got, strict=True))
    for i, k, it in items:
        if isinstance(it, Count):
            keys = count_keys(it, cfg)
            splits = [[[seen[v][q] for q in keys] for v in parts] for parts in _count_splits(i, cfg)]
            probs[i][k] = counted_probability(probs[i][k], it.number, splits)
            continue
        whole = {**{parse_element_key(q).text: p for q, p in seen.get((i, None), {}).items()}, **answered[i]}
        pair = (it.first, it.second)
        parts = [
            tuple(tuple(seen[v][_object_key(o)] for o in pair) for v in both)
            for both in _view_pairs(i, it.side, cfg.cuts)
        ]
        probs[i][k] = grounded_probability(
            tuple(whole[o] for o in pair), [s for s, _ in parts], [o for _, o in parts], cfg.steepness
        )


def _count_splits(i: int, cfg: GroundingConfig) -> list[list[tuple]]:
    """The parts of pair ``i`` whose counts add up to the image's, per split (``cfg.count_views``).
    A view is named ``(pair, edge, cut, keep the edge's part)`` where a relation's views are (so that
    they are drawn and asked once), ``(pair, "band", edge, from, to)`` or ``(pair, "cell", row,
    column, cells a side)``."""
    cuts = sorted(set(cfg.cuts))
    splits = []
    for how in cfg.count_views:
        if how == "cuts":
            splits += [
                [(i, edge, c, True), (i, edge, c, False)] for edge in ("left", "top") for c in cfg.cuts
            ]
        elif how == "bands":
            middle = list(zip(cuts, cuts[1:], strict=False))
            splits += [
                [
                    (i, edge, cuts[0], True),
                    *((i, "band", edge, a, b) for a, b in middle),
                    (i, edge, cuts[-1], False),
                ]
                for edge in ("left", "top")
            ]
        else:
            g = cfg.count_grid
            splits.append([(i, "cell", r, c, g) for r in range(g) for c in range(g)])
    return splits


def _draw(view: tuple, image: Image.Image, canvas: tuple[np.ndarray, np.ndarray]) -> Image.Image:
    """The image a view names (see :func:`_count_splits`), ``canvas`` being the image's :func:`_canvas`."""
    if view[1] is None:
        return image
    if view[1] == "band":
        edge, a, b = view[2:]
        return box_view(canvas, (a, b), (0, 1)) if edge == "left" else box_view(canvas, (0, 1), (a, b))
    if view[1] == "cell":
        r, c, g = view[2:]
        return box_view(canvas, (c / g, (c + 1) / g), (r / g, (r + 1) / g))
    return part_view(image, *view[1:], canvas=canvas)


def _view_pairs(i: int, side: str, cuts: list[float]) -> list[tuple[tuple, tuple]]:
    """Per cut, the (relation's side part, rest) views of pair ``i``, named from the left or top
    edge so that opposite relations share them."""
    edge = side if side in ("left", "top") else OPPOSITE[side]
    out = []
    for c in cuts:
        at = c if side == edge else 1 - c  # the same cut, measured from the edge the views name
        near, far = (i, edge, at, True), (i, edge, at, False)
        out.append((near, far) if side == edge else (far, near))
    return out


def _views(i: int, side: str, cuts: list[float]) -> list[tuple]:
    return [v for both in _view_pairs(i, side, cuts) for v in both]
