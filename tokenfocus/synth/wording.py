"""SynthMuse's words: a scene's prompt, in the templated or the varied register, and its element
keys, in SynthMuse's compositional form or EvalMuse's short spans."""

from __future__ import annotations

import random
import re

from tokenfocus.evalmuse import parse_element_key
from tokenfocus.render import COUNTS, SHAPES, Group, Scene

#: The words the varied register may write for a size, a count of one and a relation: a short key
#: is the prompt's own span (EvalMuse's), so it is looked up in these forms.
WRITTEN = {
    "small": ("small", "tiny", "little"),
    "large": ("large", "big", "huge"),
    "one": ("one", "a"),
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above", "placed above"),
    "below": ("below", "underneath"),
}


def plural(shape: str, count: int) -> str:
    """The noun for ``count`` shapes: ``circle``, ``circles``, ``crosses``."""
    return shape if count == 1 else shape + "es" if shape.endswith("s") else shape + "s"


def _phrase(g: Group, rng: random.Random, real: bool) -> str:
    size = g.size
    if real and rng.random() < 0.5:
        size = {"small": rng.choice(list(WRITTEN["small"])), "large": rng.choice(list(WRITTEN["large"]))}[
            g.size
        ]
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
        rel = WRITTEN[rel][1]
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


def _as_written(span: str, noun: str, prompt: str) -> str:
    """``span`` (a size, count, colour or relation of a key) as ``prompt`` writes it: the first of
    its forms (:data:`WRITTEN`) found there, before ``noun`` (two words at most between) where there
    is one; ``span`` itself where the prompt writes none of them."""
    forms = sorted(WRITTEN.get(span, (span,)), key=len, reverse=True)
    alts = "|".join(re.escape(f) for f in forms)
    tail = rf"(?: \S+){{0,2}} {re.escape(noun)}(?!\w)" if noun else r"(?!\w)"
    m = re.search(rf"(?<!\w)({alts}){tail}", prompt, flags=re.IGNORECASE)
    return m.group(1) if m else span


def shorten(keys: list[str], prompt: str = "") -> list[str]:
    """EvalMuse's short form of SynthMuse's compositional keys, a span of the prompt and its
    category: ``red circles (color)`` -> ``red (color)``, ``two circles (counting)`` -> ``two
    (counting)``, ``circle left of star (spatial)`` -> ``left of (spatial)``; object keys are one
    noun already. With the ``prompt``, a span as the prompt writes it (``huge (attribute)`` where
    it says "huge", ``a (counting)``, ``to the left of (spatial)``), as EvalMuse's annotators key
    them. A span two elements share keeps its compositional key, so keys stay unique."""
    nouns = {w for s in SHAPES for w in (s, plural(s, 2))}
    spans = []
    for key in keys:
        el = parse_element_key(key)
        words = el.text.split()
        if el.category in ("counting", "color", "attribute", "spatial") and nouns & set(words):
            span = " ".join(w for w in words if w not in nouns)
            noun = words[-1] if el.category != "spatial" else ""
            spans.append(f"{_as_written(span, noun, prompt) if prompt else span} ({el.category})")
        else:
            spans.append(key)
    clash = {s.lower() for s in spans if [x.lower() for x in spans].count(s.lower()) > 1}
    return [key if s.lower() in clash else s for key, s in zip(keys, spans, strict=True)]


def short_keys(scene: Scene, prompt: str = "") -> list[str]:
    """:func:`shorten` of a scene's element keys (as ``prompt`` writes them, where given)."""
    return shorten([k for k, *_ in elements_of(scene)], prompt)
