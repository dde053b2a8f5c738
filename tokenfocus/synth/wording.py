"""SynthMuse's words: a scene's prompt, in the templated or the varied register, and its element
keys, in SynthMuse's compositional form or EvalMuse's short spans."""

from __future__ import annotations

import random

from tokenfocus.evalmuse import parse_element_key
from tokenfocus.render import COUNTS, SHAPES, Group, Scene


def plural(shape: str, count: int) -> str:
    """The noun for ``count`` shapes: ``circle``, ``circles``, ``crosses``."""
    return shape if count == 1 else shape + "es" if shape.endswith("s") else shape + "s"


def _phrase(g: Group, rng: random.Random, real: bool) -> str:
    size = g.size
    if real and rng.random() < 0.5:
        size = {
            "small": rng.choice(["small", "tiny", "little"]),
            "large": rng.choice(["large", "big", "huge"]),
        }[g.size]
    count = COUNTS[g.count]
    if real and g.count == 1 and rng.random() < 0.5:
        count = "a"
    return f"{count} {size} {g.color} {plural(g.shape, g.count)}"


def make_prompt(scene: Scene, rng: random.Random, real: bool) -> str:
    """Render a scene's prompt in the templated (synthetic) or varied (real) register."""
    parts = [_phrase(g, rng, real) for g in scene.groups]
    if not real:
        text = parts[0]
        if scene.relation:
            text += f" {scene.relation} {parts[1]}"
        if len(parts) == 3:
            text += f" and {parts[2]}"
        return text
    rel = scene.relation
    if rel and rng.random() < 0.5:
        rel = {
            "left of": "to the left of",
            "right of": "to the right of",
            "above": "placed above",
            "below": "underneath",
        }[rel]
    body = parts[0] + (f" {rel} {parts[1]}" if rel else "")
    if len(parts) == 3:
        body += rng.choice([f", plus {parts[2]}", f" together with {parts[2]}", f" and {parts[2]}"])
    opener = rng.choice(
        ["a picture of ", "an image showing ", "there are ", "a drawing with ", "", "a scene where we see "]
    )
    return opener + body + rng.choice(["", " on a plain background", ", simple flat style"])


def elements_of(scene: Scene) -> list[tuple[str, str, str, int]]:
    """(key, category, kind, group index) for every element of the prompt."""
    out = []
    for i, g in enumerate(scene.groups):
        noun = plural(g.shape, g.count)
        out.append((f"{g.shape} ({'object'})", "object", "shape", i))
        out.append((f"{COUNTS[g.count]} {noun} (counting)", "counting", "count", i))
        out.append((f"{g.color} {noun} (color)", "color", "color", i))
        out.append((f"{g.size} {noun} (attribute)", "attribute", "size", i))
    if scene.relation:
        a, b = scene.groups[0], scene.groups[1]
        out.append((f"{a.shape} {scene.relation} {b.shape} (spatial)", "spatial", "relation", 0))
    return out


def shorten(keys: list[str]) -> list[str]:
    """EvalMuse's short form of SynthMuse's compositional keys, a span of the prompt and its
    category: ``red circles (color)`` -> ``red (color)``, ``two circles (counting)`` -> ``two
    (counting)``, ``circle left of star (spatial)`` -> ``left of (spatial)``; object keys are one
    noun already. A span two elements share keeps its compositional key, so keys stay unique."""
    nouns = {w for s in SHAPES for w in (s, plural(s, 2))}
    spans = []
    for key in keys:
        el = parse_element_key(key)
        words = el.text.split()
        if el.category in ("counting", "color", "attribute", "spatial") and nouns & set(words):
            spans.append(f"{' '.join(w for w in words if w not in nouns)} ({el.category})")
        else:
            spans.append(key)
    clash = {s for s in spans if spans.count(s) > 1}
    return [key if s in clash else s for key, s in zip(keys, spans, strict=True)]


def short_keys(scene: Scene) -> list[str]:
    """:func:`shorten` of a scene's element keys."""
    return shorten([k for k, *_ in elements_of(scene)])
