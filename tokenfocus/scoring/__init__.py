"""Token-focus scoring: read the first answer token's distribution, never generate.

Normalisation: the overall score distribution is the softmax over the logits of the five score
tokens alone, which equals the full-vocabulary probabilities renormalised over those tokens.
The score is its expected value (1..5), its entropy (nats, 0..ln 5) an uncertainty. An element
is a yes/no question: P(yes) = p(yes) / (p(yes) + p(no)), a softmax over the two logits.
"""

from tokenfocus.scoring.mass import MIN_ANSWER_MASS, AnswerMass
from tokenfocus.scoring.readout import (
    CACHE_UNSUPPORTED,
    ScoreResult,
    distribution_stats,
    encode,
    first_answer_logits,
)
from tokenfocus.scoring.reuse import SUFFIX_CACHE_MAX, PrefixReuse
from tokenfocus.scoring.scorer import ImageLike, Scorer

__all__ = [
    "AnswerMass",
    "CACHE_UNSUPPORTED",
    "MIN_ANSWER_MASS",
    "SUFFIX_CACHE_MAX",
    "ImageLike",
    "PrefixReuse",
    "ScoreResult",
    "Scorer",
    "distribution_stats",
    "encode",
    "first_answer_logits",
]
