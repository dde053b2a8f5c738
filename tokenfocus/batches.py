"""Scoring batches: which pairs run together, so a batch pads little and fits its memory."""

from __future__ import annotations

from collections.abc import Sequence

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
