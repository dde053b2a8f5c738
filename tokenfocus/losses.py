"""The token-focus hybrid loss and the plain language-model loss it is compared with.

Only the first answer position carries the score, so the focus loss looks at nothing else:
the five score-token logits there (and the yes/no pair for element questions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenfocus.prefix import ids_after
from tokenfocus.scoring import distribution_stats, encode, first_answer_logits


def score_target(scores: torch.Tensor, k: int = 5, *, soft: bool = True) -> torch.Tensor:
    """Target distribution over the ``k`` score tokens for mean human scores in 1..k.

    Soft: two-hot, the mass split between the two nearest integers so that its expected value
    is the human mean (3.4 -> 0.6 on "3", 0.4 on "4"). Hard: one-hot on the rounded score.
    """
    s = scores.clamp(1, k) - 1
    if not soft:
        return F.one_hot(s.round().long(), k).to(scores.dtype)
    lo = s.floor().long().clamp(max=k - 2)
    w = (s - lo).unsqueeze(-1)
    return F.one_hot(lo, k) * (1 - w) + F.one_hot(lo + 1, k) * w


def focus_loss(
    score_logits: torch.Tensor,
    scores: torch.Tensor,
    *,
    ce_weight: float = 1.0,
    mse_weight: float = 0.1,
    soft: bool = True,
) -> dict[str, torch.Tensor]:
    """Restricted cross-entropy over the score tokens plus MSE of the expected score.

    Args:
        score_logits: (B, K) logits of the K score tokens at the first answer position.
        scores: (B,) mean human scores in 1..K.

    Returns:
        ``loss`` and its parts ``ce`` and ``mse``.
    """
    logp = torch.log_softmax(score_logits.float(), dim=-1)
    ce = -(score_target(scores, score_logits.shape[-1], soft=soft) * logp).sum(-1).mean()
    expected, _ = distribution_stats(logp.exp())
    mse = F.mse_loss(expected, scores.float())
    return {"loss": ce_weight * ce + mse_weight * mse, "ce": ce, "mse": mse}


def element_loss(yes_no_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of P(yes) = softmax([yes, no])[0] against labels in 0..1."""
    margin = yes_no_logits[:, 0].float() - yes_no_logits[:, 1].float()
    return F.binary_cross_entropy_with_logits(margin, labels.float())


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary next-token cross-entropy on the answer tokens (the ablation baseline).

    Args:
        logits: (B, T, V) logits at the positions that predict the answer tokens.
        targets: (B, T) answer token ids; -100 marks positions to ignore.
    """
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
    )


def answer_target_ids(tokenizer, texts: list[str], answers: list[str], end: str) -> list[list[int]]:
    """The token ids each answer (+ end of turn) takes after its chat text, in context.

    Why in context: a byte-level BPE or a SentencePiece tokenizer writes an answer that follows
    "assistant\\n" or " [/INST]" with other tokens than the answer encoded alone (" yes" vs "yes"),
    and may merge across the boundary; the loss must target the tokens the model reads.
    """
    return [ids_after(tokenizer, text, [a + end])[0] for text, a in zip(texts, answers, strict=True)]


def answer_lm_loss(model, processor, texts: list[str], answers: list[str], images, end: str) -> torch.Tensor:
    """:func:`lm_loss` on the answer tokens (answer + end of turn) of chat texts.

    Args:
        texts: chat texts ending with the generation prompt.
        answers: the answer written after each text.
        images: one PIL image per text.
        end: what the chat template writes after an assistant answer.
    """
    answer_ids = answer_target_ids(processor.tokenizer, texts, answers, end)
    batch = encode(processor, [t + a + end for t, a in zip(texts, answers, strict=True)], images)
    # left padding: every answer ends at the last position
    return span_lm_loss(first_answer_logits(model, batch, max(map(len, answer_ids)) + 1), answer_ids)


def span_lm_loss(logits: torch.Tensor, answer_ids: list[list[int]]) -> torch.Tensor:
    """:func:`lm_loss` of rows that end with their answer's ids.

    Args:
        logits: (B, t + 1, V), each row's last t + 1 positions (t: the longest answer); the last
            predicts past the answer and is dropped.
        answer_ids: each row's answer ids (:func:`answer_target_ids`); a shorter one's earlier
            positions are ignored.
    """
    t = logits.shape[1] - 1
    targets = torch.tensor([[-100] * (t - len(a)) + a for a in answer_ids], device=logits.device)
    return lm_loss(logits[:, :-1], targets)
