"""Counting elements read from the parts of the image as well as from their own question.

Measured (docs/styles.md, "Counting read from the image's parts"): asked "Does the image show three
circles ?", the tiny backbones rank counting elements at AUC 0.73-0.75 on val and answer below the
base rate, while they tell whether a circle is in a part of the image at 0.92-1.00, and a part
holds fewer circles than the whole. So, on parts of the image (what is hidden filled with its
median colour), split as ``GroundingConfig.count_views`` says: in bands between the ``cuts``, across
and down; in ``count_grid`` x ``count_grid`` cells; or at each cut in two (the views of
:mod:`tokenfocus.scoring.grounding`, shared with a relation's):

1. Per part, a count distribution over 0..``count_max``: P(0) = 1 - P(circle), the rest of the mass
   split by the answers to "one circle", "two circles", ..., normalised.
2. Per split, its parts' distributions convolved: the whole image's count, each object in one part.
3. The parts' reading of the claimed count: its probability averaged over the splits, over that of
   the likeliest count (1 where the claimed count is the likeliest).
4. P(yes) = the mean of the element's own answer and the parts' reading.

A key whose count is no number word of ``GroundingConfig.numbers`` (or a digit) within
1..2 x ``count_max``, or whose object cannot be named (a short key with no object element after its
number in the prompt; an irregular plural no object element names), keeps its answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tokenfocus.config import GroundingConfig
from tokenfocus.evalmuse import parse_element_key


@dataclass(frozen=True)
class Count:
    """A counting element's object (singular, and plural as the questions say it) and its number."""

    noun: str
    plural: str
    number: int


def word_matches(phrase: str, text: str):
    """Every whole-word, case-blind match of ``phrase`` in ``text``, in order."""
    return re.finditer(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, flags=re.IGNORECASE)


def find_word(phrase: str, text: str) -> re.Match | None:
    """The first whole-word, case-blind match of ``phrase`` in ``text``."""
    return next(word_matches(phrase, text), None)


def object_mentions(prompt: str, objects: list[str]) -> list[tuple[int, int, str, str]]:
    """(start, end, object, the words as written) of every mention of an object in the prompt,
    plural forms included: where a short element key (``"three (counting)"``, ``"left of
    (spatial)"``) finds the objects it is about."""
    return [
        (m.start(), m.end(), obj, m.group(0))
        for obj in objects
        for m in re.finditer(rf"(?<!\w){re.escape(obj)}(?:s|es)?(?!\w)", prompt, flags=re.IGNORECASE)
    ]


def mention_after(words: str, prompt: str, objects: list[str]) -> tuple[int, int, str, str] | None:
    """The first mention of an object (:func:`object_mentions`) after ``words`` in the prompt, or
    None: what a short element key (``"three (counting)"``, ``"red (color)"``) is about."""
    at = find_word(words, prompt)
    mentions = [m for m in object_mentions(prompt, objects) if at and m[0] >= at.end()]
    return min(mentions) if mentions else None


def _number(word: str, cfg: GroundingConfig) -> int | None:
    word = word.lower()
    return int(word) if word.isdigit() else cfg.numbers.get(word)


def plural_of(noun: str) -> str:
    """English's regular plural (``cross`` -> ``crosses``); a prompt's own plural is used where it has one."""
    return noun + ("es" if noun.endswith(("s", "x", "z", "ch", "sh")) else "s")


def _singular(text: str, number: int) -> str | None:
    """``text``'s singular where its regular plural is ``text`` (``circles`` -> ``circle``), else None."""
    if number == 1:
        return text
    for cut in (2, 1):
        if len(text) > cut and plural_of(text[:-cut]).lower() == text.lower():
            return text[:-cut]
    return None


def _names(noun: str, text: str) -> bool:
    return text.lower() in (noun.lower(), plural_of(noun).lower())


def parse_count(key: str, prompt: str, keys: list[str], cfg: GroundingConfig) -> Count | None:
    """The object and number of a counting element, or None where it keeps its own answer.

    Args:
        key: ``"three circles (counting)"``, or EvalMuse's short form ``"three (counting)"``.
        prompt: the pair's prompt: a short key's object is the first object mentioned after its
            number word there.
        keys: the pair's element keys; those of ``cfg.object_categories`` name its objects.
        cfg: the number words, categories and the most objects a part is asked about.
    """
    el = parse_element_key(key)
    if el.category not in cfg.count_categories or not el.text:
        return None
    words = el.text.split()
    number = _number(words[0], cfg)
    if number is None or not 1 <= number <= 2 * cfg.count_max:
        return None
    objects = [e.text for e in map(parse_element_key, keys) if e.category in cfg.object_categories and e.text]
    rest = " ".join(words[1:])
    if rest:  # "three circles": the object element it names, else the key's own words made singular
        noun = next((o for o in objects if _names(o, rest)), None) or _singular(rest, number)
        said = rest if number > 1 else None
    else:
        mention = mention_after(words[0], prompt, objects)
        if mention is None:
            return None
        _, _, noun, said = mention
        said = said if number > 1 else None
    if noun is None:
        return None
    return Count(noun, said if said and said.lower() != noun.lower() else plural_of(noun), number)


def count_keys(count: Count, cfg: GroundingConfig) -> list[str]:
    """The questions a part is asked for ``count``: its object, then one to ``count_max`` of it."""
    words = {n: w for w, n in reversed(cfg.numbers.items())}  # the first word of each number
    return [f"{count.noun} (object)"] + [
        f"{words.get(n, str(n))} {count.noun if n == 1 else count.plural} (counting)"
        for n in range(1, cfg.count_max + 1)
    ]


def part_distribution(answers: np.ndarray) -> np.ndarray:
    """Count distributions over 0..K from ``(..., K + 1)`` answers: P(object), P(one), ..., P(K)."""
    present, yes = answers[..., :1], answers[..., 1:]
    share = yes / np.maximum(yes.sum(-1, keepdims=True), 1e-12)
    return np.concatenate([1 - present, present * share], -1)


def convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The distribution of the sum of two independent counts: ``(..., A)``, ``(..., B)`` -> ``(..., A + B - 1)``."""
    out = np.zeros(a.shape[:-1] + (a.shape[-1] + b.shape[-1] - 1,))
    for i in range(a.shape[-1]):
        out[..., i : i + b.shape[-1]] += a[..., i : i + 1] * b
    return out


def counted_probability(asked: float, number: int, splits: list[list[list[float]]]) -> float:
    """P(yes) of a counting element from its own answer and, per split of the image, its parts'
    answers (each P(object), P(one), ..., P(count_max)): the parts' counts add up to the image's."""
    counts = []
    for parts in splits:
        whole = part_distribution(np.array(parts[0]))
        for part in parts[1:]:
            whole = convolve(whole, part_distribution(np.array(part)))
        counts.append(whole)
    longest = max(len(c) for c in counts)  # splits into more parts hold more
    whole = np.mean([np.pad(c, (0, longest - len(c))) for c in counts], axis=0)
    reading = float(whole[number] / whole.max()) if number < longest and whole.max() > 0 else 0.0
    return (asked + reading) / 2
