"""What the scorer reads from a forward pass: the first answer token's logits, and the score
distribution's expected value and entropy; shared by the scorer, the losses and the trainer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from PIL import Image

#: What a family raises when its forward cannot take a reused cache (a missing argument, an
#: unsupported cache type): prefix reuse is then switched off for that scorer, and only then.
CACHE_UNSUPPORTED = (TypeError, NotImplementedError, AttributeError, KeyError, IndexError, ValueError)


@dataclass
class ScoreResult:
    score: float  # expected value over 1..5
    distribution: list[float]  # P(1)..P(5)
    entropy: float  # nats
    elements: dict[str, float] = field(default_factory=dict)  # key -> P(yes)

    def to_dict(self) -> dict:
        return asdict(self)


def distribution_stats(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected score (1..K) and entropy of each row of a (N, K) probability tensor."""
    values = torch.arange(1, probs.shape[-1] + 1, dtype=probs.dtype, device=probs.device)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return (probs * values).sum(-1), entropy


def encode(processor, texts: list[str], images: list[Image.Image]):
    """One padded batch through the processor (left padding: every row ends at the answer)."""
    return processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")


def first_answer_logits(model, batch, span: int = 1) -> torch.Tensor:
    """Logits of the first answer token, (B, V): the last position of each left-padded row (with
    ``span`` > 1, (B, span, V): each row's last ``span`` positions, as the lm loss reads them)."""
    logits = model(**batch.to(model.device), logits_to_keep=span).logits
    return logits[:, -1] if span == 1 else logits


def element_lists(elements, n: int) -> list[list[str]]:
    """Each pair's element keys as a list (none where ``elements`` or a pair's entry is None).

    Raises:
        ValueError: naming the pair and element of a key that is not a non-empty string, as the
            server refuses one (tokenfocus/serving/requests.py), before any image is decoded.
    """
    els = [list(e or []) for e in elements] if elements is not None else [[] for _ in range(n)]
    for i, keys in enumerate(els):
        for j, key in enumerate(keys):
            if not isinstance(key, str) or not key.strip():
                raise ValueError(f"prompt {i}, element {j}: {key!r} is not a non-empty string")
    return els
