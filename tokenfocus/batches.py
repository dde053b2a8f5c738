"""Batches: which pairs a scoring batch runs together (so it pads little and fits its memory),
and which element question each pair of a training batch asks."""

from __future__ import annotations

from collections.abc import Sequence

from tokenfocus.evalmuse import Record
from tokenfocus.prompts import COUNT_WORDS, counterfactual
from tokenfocus.synth import shorten

#: A counterfactual element question: (the prompt it quotes, its key, its P(yes) target).
Swap = tuple[str, str, float]

#: Characters per text token, for sizing batches before tokenising (an estimate, ~4 for English).
CHARS_PER_TOKEN = 4


def plan_batches(
    lengths: Sequence[int], image_tokens: Sequence[int], batch_size: int, batch_tokens: int = 0
) -> list[list[int]]:
    """Index batches sorted by image tokens, then text length, so rows of one batch pad little.

    A batch closes at ``batch_size`` rows, or, with ``batch_tokens``, before its padded size (rows
    x its longest row: image tokens + text tokens) would pass it: a dynamic-resolution batch of
    large images holds fewer pairs than one of small images. A single row always runs.

    Args:
        lengths: each row's text length in characters.
        image_tokens: each row's image tokens (0 where unknown).
        batch_size: rows per batch at most.
        batch_tokens: padded tokens per batch at most; 0 = rows alone.
    """
    chunks: list[list[int]] = []
    longest = 0
    for i in sorted(range(len(lengths)), key=lambda i: (image_tokens[i], lengths[i])):
        size = image_tokens[i] + lengths[i] // CHARS_PER_TOKEN
        full = chunks and (
            len(chunks[-1]) == batch_size
            or (batch_tokens and (len(chunks[-1]) + 1) * max(longest, size) > batch_tokens)
        )
        if not chunks or full:
            chunks.append([])
            longest = 0
        chunks[-1].append(i)
        longest = max(longest, size)
    return chunks


def image_tokens(processor, images) -> list[int]:
    """Image tokens each image expands to, as the processor says (``_get_num_multimodal_tokens``,
    which transformers marks as subject to change: 0 each where it is missing or fails, and batches
    are then cut by rows alone)."""
    count = getattr(processor, "_get_num_multimodal_tokens", None)
    try:
        got = count(image_sizes=[(im.height, im.width) for im in images]).num_image_tokens
    except Exception:  # noqa: BLE001 - an estimate for batching only
        return [0] * len(images)
    return [int(t) for t in got] if got and len(got) == len(images) else [0] * len(images)


def ask_elements(
    records: list[Record], rng, balance: float, counterfactual_share: float = 0.0, swap_rng=None, counts=()
) -> tuple[list[str], list[Swap | None]]:
    """Each training pair's element question: its key, and where it is asked as a counterfactual,
    the swap that replaces it.

    Args:
        records: the batch's pairs.
        rng: numpy generator of the batch (the keys are drawn from it alone, as ever).
        balance: share of pairs asked one of their absent elements, where they have any: most
            elements are present, and drawing absent ones more often makes the image matter.
        counterfactual_share: share of present counting and spatial elements asked with their
            count one off or their relation turned round (:func:`~tokenfocus.prompts.counterfactual`),
            with the target 1 - label: a contrast only the image can settle.
        swap_rng: numpy generator of the counterfactuals (a stream of its own).
        counts: the count words a counterfactual may claim.
    """
    keys: list[str] = []
    swaps: list[Swap | None] = []
    for r in records:
        absent = [e.key for e in r.elements if (r.element_score[e.key] or 0) < 0.5]
        every = [e.key for e in r.elements]
        pool = absent if absent and rng.random() < balance else every
        keys.append(pool[rng.integers(len(pool))])
        label = r.element_score[keys[-1]] or 0.0
        swap = None
        if counterfactual_share > 0 and label >= 0.5 and swap_rng.random() < counterfactual_share:
            cf = counterfactual(r.prompt, keys[-1], up=swap_rng.random() < 0.5, counts=tuple(counts))
            swap = (cf[0], cf[1], 1.0 - label) if cf else None
        swaps.append(swap)
    return keys, swaps


def count_words(records: list[Record]) -> tuple[str, ...]:
    """The count words the data's counting elements claim, in order: what a counterfactual count
    may be (a word the data never uses would give the swap away)."""
    seen = {w for r in records for e in r.elements if e.category == "counting" for w in e.text.split()}
    return tuple(w for w in COUNT_WORDS if w in seen)


def short_keyed(
    records: list[Record], keys: list[str], share: float, rngs, overall: bool = True
) -> tuple[list[list[str]], list[str]]:
    """Each training pair's element keys and its asked key, for ``share`` of the pairs in EvalMuse's
    short form (:func:`~tokenfocus.synth.shorten`: ``red (color)`` for ``red circles (color)``).

    Why: EvalMuse keys its elements with spans of the prompt, SynthMuse with compositional keys;
    a scorer trained on one form alone reads the other worse (docs/styles.md, short keys). The
    labels stay those of the long keys; a key that has no short form (objects) stays as it is.

    Args:
        records: the batch's pairs.
        keys: the key each pair is asked (:func:`ask_elements`).
        share: share of pairs keyed in the short form; 0 = never.
        rngs: one numpy generator per pair (drawn from only where ``share`` > 0).
        overall: whether the element list the overall question carries is rewritten too (else
            only the asked element's key is).
    """
    names: list[list[str]] = []
    asked: list[str] = []
    for r, key, rng in zip(records, keys, rngs, strict=True):
        full = [e.key for e in r.elements]
        form = shorten(full, r.prompt) if share > 0 and rng.random() < share else full
        names.append(form if overall else full)
        asked.append(dict(zip(full, form, strict=True)).get(key, key))
    return names, asked
