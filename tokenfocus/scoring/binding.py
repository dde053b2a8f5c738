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
from tokenfocus.scoring.counting import mention_after, object_mentions, plural_of, word_matches
from tokenfocus.scoring.grounding import parse_relation


def object_elements(keys, cfg: GroundingConfig) -> dict[str, str]:
    """Object name -> its element key, for the keys of ``cfg.object_categories``."""
    objects = {}
    for key in keys:
        el = parse_element_key(key)
        if el.category in cfg.object_categories and el.text:
            objects[el.text] = key
    return objects


def _names_object(text: str, objects: dict[str, str]) -> str | None:
    for name, obj_key in objects.items():  # the words end with the object's name, or its plural
        if re.search(rf"(?<!\w)(?:{re.escape(name)}|{re.escape(plural_of(name))})$", text, re.IGNORECASE):
            return obj_key
    return None


def named(key: str, prompt: str, objects: dict[str, str], cfg: GroundingConfig) -> str:
    """The key a short element of ``cfg.name_categories`` is asked as: its words and the object
    the prompt mentions next, as written (``"large (attribute)"`` in "two large red squares" ->
    ``"large squares (attribute)"``); a relation of ``cfg.categories`` between the objects grounding
    reads it between (``"left of (spatial)"`` -> ``"square left of star (spatial)"``); any other
    key as it is.

    Why: EvalMuse keys its elements with spans of the prompt, and a bare span ("Does the image show
    large ?") asks the model for a prior, not about the image: a base trained on bound labels
    rejected 216 of 226 true "small" elements so asked (docs/styles.md). The object is looked up
    after the span, within ``cfg.name_gap`` words of it (at the span's first place in the prompt
    that has one), so a span that follows its object ("a car that is red") keeps its words alone.
    The overall question's element list is named alike (:func:`asked_keys`).

    Args:
        key: an element key.
        prompt: the pair's prompt.
        objects: :func:`object_elements` of the pair's keys.
        cfg: the categories named and the words a span may stand before its object.
    """
    el = parse_element_key(key)
    if el.category not in cfg.name_categories or not el.text or _names_object(el.text, objects):
        return key
    if el.category in cfg.categories:  # a relation: the objects grounding reads it between
        if parse_relation(key, "", [], cfg):  # read from the key alone: it names both objects
            return key
        rel = parse_relation(key, prompt, list(objects.values()), cfg)
        return f"{rel.first} {el.text} {rel.second} ({el.category})" if rel else key
    mentions = sorted(object_mentions(prompt, list(objects)))
    for at in word_matches(el.text, prompt):
        after = [m for m in mentions if m[0] >= at.end()]  # "a" of "a picture of a star": the second
        if after and len(prompt[at.end() : after[0][0]].split()) <= cfg.name_gap:
            return f"{el.text} {after[0][3]} ({el.category})"
    return key


def _ask(key: str, prompt: str, keys: list[str], objects: dict[str, str], cfg: GroundingConfig) -> str:
    ask = named(key, prompt, objects, cfg)
    return key if ask != key and ask in keys else ask


def ask_as(key: str, prompt: str, keys: list[str], cfg: GroundingConfig | None) -> str:
    """The key ``key`` (of a pair whose keys are ``keys``) is asked as: :func:`named`, or ``key``
    itself where naming is off (no ``cfg``) or the named key is already one of the pair's."""
    if cfg is None or not cfg.name_categories:
        return key
    return _ask(key, prompt, keys, object_elements(keys, cfg), cfg)


def asked_keys(
    prompts: list[str], elements: list[list[str]], cfg: GroundingConfig | None
) -> list[dict[str, str]]:
    """Per pair, each element's asked key (:func:`ask_as`) -> its own key, in the pair's order."""
    if cfg is None or not cfg.name_categories:
        return [{k: k for k in keys} for keys in elements]
    out = []
    for prompt, keys in zip(prompts, elements, strict=True):
        objects = object_elements(keys, cfg)  # once per pair, not per key
        out.append({_ask(k, prompt, keys, objects, cfg): k for k in keys})
    return out


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
    obj = _names_object(text, objects)
    if obj is not None:
        return obj
    mention = mention_after(text, prompt, list(objects))
    return objects[mention[2]] if mention else None


def bind(prompts: list[str], probs: list[dict[str, float]], cfg: GroundingConfig) -> None:
    """In place: each element of ``cfg.bind_categories`` in ``probs`` (one dict of element P(yes)
    per pair) capped at its object element's P(yes), as that was read (asked, mirrored)."""
    if not cfg.bind_categories:
        return
    for prompt, pair in zip(prompts, probs, strict=True):
        objects = object_elements(pair, cfg)
        for key in pair:
            if parse_element_key(key).category in cfg.bind_categories:
                obj = object_of(key, prompt, objects)
                if obj is not None:
                    pair[key] = min(pair[key], pair[obj])
