"""Elements of an object held to that object: P(yes) no higher than the object's own.

"red squares (color)", "two squares (counting)" and "large squares (attribute)" each say that the
image holds squares. Where it holds none, none of them is realised: SynthMuse labels them so
(``synth.bind_shape``), as an annotator judges an element of an object the image does not show.
The tiny backbones tell whether an object is there (test objects 0.98) far better than they bind
a colour, count or size to it: asked "red squares" where red circles stand, they answer for the
red. So each element of ``GroundingConfig.bind_categories`` takes P(yes) = min(its own, its
object's): what the spatial grounding already does with a relation's two objects, and what
probability asks of a conjunction (P(red squares) <= P(squares)).

Measured offline on the seed-0 tables (docs/styles.md, "Elements held to their object"), per
backbone, on val, test and the held-out family, attribute, colour and counting accuracy all rise.

A compositional key names its object ("red squares": the object element ``square``); EvalMuse's
short form ("red (color)") is about the first object the prompt mentions after its words. A key
whose object is none of the pair's object elements (``object_categories``) keeps its answer.
"""

from __future__ import annotations

import re

from tokenfocus.config import GroundingConfig
from tokenfocus.evalmuse import parse_element_key
from tokenfocus.scoring.counting import mention_after, plural_of


def object_of(key: str, prompt: str, objects: dict[str, str]) -> str | None:
    """The key of the object element ``key`` is about, or None.

    Args:
        key: an element key, ``"red squares (color)"`` or ``"red (color)"``.
        prompt: the pair's prompt, where a short key's object is the first mentioned after it.
        objects: object name -> its element key, for the pair's object elements.
    """
    text = parse_element_key(key).text
    if not text:
        return None
    for name, obj_key in objects.items():  # the words end with the object's name, or its plural
        if re.search(rf"(?<!\w)(?:{re.escape(name)}|{re.escape(plural_of(name))})$", text, re.IGNORECASE):
            return obj_key
    mention = mention_after(text, prompt, list(objects))
    return objects[mention[2]] if mention else None


def bind(prompts: list[str], probs: list[dict[str, float]], cfg: GroundingConfig) -> None:
    """In place: each element of ``cfg.bind_categories`` in ``probs`` (one dict of element P(yes)
    per pair) capped at its object element's P(yes), as that was read (asked, mirrored)."""
    if not cfg.bind_categories:
        return
    for prompt, pair in zip(prompts, probs, strict=True):
        objects = {}
        for key in pair:
            el = parse_element_key(key)
            if el.category in cfg.object_categories and el.text:
                objects[el.text] = key
        for key in pair:
            if parse_element_key(key).category in cfg.bind_categories:
                obj = object_of(key, prompt, objects)
                if obj is not None:
                    pair[key] = min(pair[key], pair[obj])
