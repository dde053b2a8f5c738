"""The answer mass: how much of the first answer token's probability the answer tokens carry.

A checkpoint whose chat template or answer tokens do not fit it (its answers begin with another
token) carries little there, and its restricted softmax reads noise. So a scorer checks its first
batch and warns. A model fine-tuned with the token-focus loss may carry little there by design:
the loss reads the answer tokens' logits alone, and the rest of the vocabulary drifts (to words of
the prompt: "one", "right", "star"). Measured on the pipeline's 555 val questions: the Gemma base
carries 0.999 and its LoRA fine-tune 0.37 on average, 0.056 at its 5th percentile (the scorer
warned on every `make run`); the Qwen2 base 1.000, its fine-tune 0.81 and 0.12. So the trainer records what its saved model's validation carried (``answer_mass`` in the model's
``tokenfocus.json``) and a scorer of that folder warns only below half of the least 5% of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)

#: With no record of the model's own: below this share of the first token's probability, a warning.
MIN_ANSWER_MASS = 0.5
#: With a record: a warning below this fraction of the record's ``low`` (its rows' 5th percentile).
RECORD_MARGIN = 0.5
LOW_QUANTILE = 0.05


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%" if share >= 1e-3 else f"{100 * share:.2g}%"


def mass_record(rows: torch.Tensor) -> dict:
    """What a trained model's folder records of its validation rows' answer mass (4 decimals:
    float noise below them does not change the versioned folder's bytes)."""
    rows = rows.double()
    return {
        "mean": round(rows.mean().item(), 4),
        "low": round(torch.quantile(rows, LOW_QUANTILE).item(), 4),
        "rows": int(rows.numel()),
    }


class AnswerMass:
    """The answer mass of a scorer's overall questions: checked once, on the first batch, against
    the model's record (``record``, from its folder) or :data:`MIN_ANSWER_MASS`; collected row by
    row inside :meth:`collect` (the trainer's validation, which writes the record)."""

    def __init__(self, slug: str, record: dict | None = None, *, check: bool = True):
        self.slug, self.record = slug, record or None
        self.checked = not check  # a model in training moves: nothing to check it against
        self.first: float | None = None  # the first batch's mean, once checked
        self._rows: list[torch.Tensor] | None = None

    @property
    def floor(self) -> float:
        """The first batch's mean answer mass below which the scorer warns."""
        return RECORD_MARGIN * float(self.record["low"]) if self.record else MIN_ANSWER_MASS

    def observe(self, logits: torch.Tensor, answer_ids: Sequence[int]) -> None:
        """Read a batch's (B, V) first-answer logits; warn once when its mean mass is below the floor."""
        if self.checked and self._rows is None:
            return  # nothing to do: no softmax over the vocabulary
        rows = torch.softmax(logits.float(), dim=-1)[:, list(answer_ids)].sum(-1).cpu()
        if self._rows is not None:
            self._rows.append(rows)
        if self.checked:
            return
        self.checked, self.first = True, rows.mean().item()
        if self.first >= self.floor:
            return
        carry = (
            f"{self.slug}: the answer tokens carry {_percent(self.first)} of the first token's probability"
        )
        if self.record:
            log.warning(
                "%s, under half of the %s that the least 5%% of its training validation's questions "
                "carried: check that the chat template and the score/yes/no tokens are those it was "
                "trained with",
                carry,
                _percent(float(self.record["low"])),
            )
        else:
            log.warning(
                "%s (below %.0f%%): check the chat template and the score/yes/no tokens for this checkpoint",
                carry,
                100 * MIN_ANSWER_MASS,
            )

    @contextmanager
    def collect(self) -> Iterator[dict]:
        """Collect the mass of every overall row scored inside the block; the yielded dict is
        filled with :func:`mass_record`'s keys at its end (left empty when nothing was scored)."""
        self._rows, out = [], {}
        try:
            yield out
        finally:
            rows, self._rows = self._rows, None
            if rows:
                out.update(mass_record(torch.cat(rows)))
