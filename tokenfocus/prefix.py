"""Reusing a prefix's key/value cache: run the shared part of many questions once, then only the rest.

A :class:`Prefix` is a batch of rows that have run through the model: its cache, its attention mask
(left padding from the prefill, right padding from each extension) and each row's next rotary
position. :func:`extend` runs new token rows from chosen rows of a prefix, reads the logits at each
row's last real token, and can return the longer prefix for a further extension. The scorer builds
its two paths from these: the image alone as a prefix for the overall question and the element
questions of a pair (one tower pass and one image prefill per pair), and the element questions'
shared words as a second level.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch


@dataclass
class Prefix:
    """Rows that have run: ``cache`` (keys/values), ``mask`` (B, L) and ``starts`` (B,), each row's
    next rotary position (where text appended to it begins)."""

    cache: object
    mask: torch.Tensor
    starts: torch.Tensor


def select_cache(cache, rows: torch.Tensor):
    """A new cache holding ``rows`` of ``cache`` (repeats allowed), leaving ``cache`` untouched.

    Cheaper than a deep copy followed by a selection: only the selected rows are copied.
    """
    sub = copy.copy(cache)
    sub.layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            new.keys, new.values = layer.keys[rows], layer.values[rows]
        sub.layers.append(new)
    return sub


def kv_bytes(cache) -> int:
    """Bytes the cache's keys and values hold, all rows together."""
    return sum(
        t.numel() * t.element_size()
        for layer in cache.layers
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
        if t is not None
    )


def next_positions(mask: torch.Tensor, rope_state) -> torch.Tensor:
    """Each prefilled row's next rotary position, where text appended to it starts.

    Why explicit: a family with 1-D positions numbers the left-padded prefix 0..L-1, so the
    suffix starts at L (what the model would assume). A family with multimodal 3-D positions
    (Qwen2-VL's M-RoPE) numbers the image by its grid and keeps a per-row offset from the
    prefill (``rope_deltas``); left to itself, it would apply the prefill batch's offsets to
    the suffix rows by count, not by owner, and shift or fail. Its suffix starts at the row's
    real length plus its offset, and the suffix rows are then selected by owner like the cache.
    """
    deltas = getattr(rope_state, "rope_deltas", None)
    if deltas is None:
        return torch.full((mask.shape[0],), mask.shape[1], dtype=torch.long, device=mask.device)
    return mask.long().sum(1) + deltas.view(-1).long().to(mask.device)


def prefill(model, batch, rope_state) -> Prefix:
    """Run a processor batch (left-padded, images included) and keep its cache."""
    batch = batch.to(model.device)
    cache = model(**batch, use_cache=True, logits_to_keep=1).cache
    return Prefix(cache, batch["attention_mask"], next_positions(batch["attention_mask"], rope_state))


def extend(
    model,
    prefix: Prefix,
    owner: torch.Tensor,
    ids: list[list[int]],
    pad: int,
    *,
    keep: bool = False,
    span: int = 1,
) -> tuple[torch.Tensor, Prefix | None]:
    """Run ``ids`` (one token list per new row) after the prefix rows ``owner``.

    Rows are right-padded, so each row's answer position is its own last real token. The prefix
    is left untouched (its rows are copied), so it serves any number of extensions.

    Returns:
        (R, V) logits at each row's last real token (with ``span`` > 1: (R, span, V), each row's
        last ``span`` positions, in order), and with ``keep`` the extended prefix.
    """
    device = model.device
    width = max(len(x) for x in ids)
    if span > min(len(x) for x in ids):
        raise ValueError(f"{span} positions asked of a row of {min(len(x) for x in ids)} tokens")
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
    row_mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
    owner = owner.to(device)
    mask = torch.cat([prefix.mask[owner], row_mask], dim=1)
    last = row_mask.sum(1)[:, None] - torch.arange(span, 0, -1, device=device)  # (R, span)
    # only the positions read are kept (the logits of the others are never computed)
    kept = torch.unique(last)
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=prefix.starts[owner, None] + torch.arange(width, device=device),
        cache=select_cache(prefix.cache, owner),
        logits_to_keep=kept,
    )
    logits = out.logits[torch.arange(len(ids), device=device)[:, None], torch.searchsorted(kept, last)]
    logits = logits[:, 0] if span == 1 else logits
    longer = Prefix(out.cache, mask, prefix.starts[owner] + row_mask.sum(1)) if keep else None
    return logits, longer


def ids_after(tokenizer, context: str, texts: list[str]) -> list[list[int]]:
    """The token ids each text becomes when it follows ``context`` in one joined text.

    Why in context: a SentencePiece-style tokenizer gives a text encoded on its own a leading "▁"
    that it does not get after a special token, and a byte-level BPE may merge across the join; the
    cached path must feed exactly the ids the plain path reads. A text that merges with the
    context's last token cannot be split there: ValueError (the scorer then scores without reuse).
    """
    before = tokenizer.encode(context, add_special_tokens=False)
    joined = tokenizer([context + t for t in texts], add_special_tokens=False)["input_ids"]
    out = []
    for text, ids in zip(texts, joined, strict=True):
        if ids[: len(before)] != before:
            raise ValueError(f"{text[:40]!r} merges with the end of {context[-40:]!r}: no cache split there")
        out.append(ids[len(before) :])
    return out
