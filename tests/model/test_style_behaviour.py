"""Issue 23, section 6, on the shipped bases: styles no training drew, relation swaps and counts
off by one (tests/model/style_probes.py draws the scenes, from seeds of their own).

Two kinds of check per probe. A floor a little under what each base measures (docs/styles.md),
so that a real regression fails. And the issue's target (0.90 / 0.85 / 0.80): where a base falls
short it is a strict expected failure that names the measurement, so the shortfall stays visible
and the day a base reaches the target the suite says so.
"""

import pytest

from tests.model.conftest import PARAMS
from tests.model.style_probes import count_off_by_one, relation_swap, style_invariance

BOOK = PARAMS.styles.book()
#: classic (the benchmark's), one training style, and the held-out family no model saw
STYLES = [BOOK.catalog["classic"], BOOK.catalog["mixed"], BOOK.heldout[0]]

#: measured on the shipped (domain-randomised) bases (scripts/style_checks.py): invariance is the share
#: of 128 elements right in all three styles at once, the others shares of 64 scenes. The relation
#: swap as the scorer reads spatial elements, grounded in where their objects stand (`score.grounding`;
#: each relation asked as a question, the bases measured 0.516 and 0.547: docs/styles.md). The count
#: off by one as the scorer reads counting elements, from the parts of the image as well
#: (`score.grounding.count_categories`; asked alone, the bases measured 0.766 and 0.906), in bands
#: and cells (`count_views`; read from the cuts' two parts, 0.859 and 0.953: the probe's large shapes
#: straddle a cell's edge more often than the benchmark's, docs/styles.md). Objects, colours, sizes
#: and the counts' own answers asked on the mirrored image too (`score.grounding.mirror_categories`;
#: asked once, Qwen2 measured invariance 0.836 and count 0.828 with the cuts). The Gemma base with
#: 6,000 element steps (docs/styles.md): invariance 0.852 and count 0.984, against R5's 0.875 and 0.891;
#: the same recipe at one thread on OpenBLAS with fused AdamW (docs/pretraining.md): 0.812 and 0.969;
#: with stage 3's labels bound to their shape and its questions balanced (docs/styles.md): 0.844 and 0.969
MEASURED = {
    "invariance": {"fastvlm_qwen2": 0.828, "fastvlm_gemma": 0.844},
    "relation_swap": {"fastvlm_qwen2": 0.984, "fastvlm_gemma": 1.0},
    "count_off_by_one": {"fastvlm_qwen2": 0.812, "fastvlm_gemma": 0.969},
}
MARGIN = 0.07  # about 1.5 standard errors of a share of 64 near 0.5
TARGETS = {"invariance": 0.90, "relation_swap": 0.85, "count_off_by_one": 0.80}
_RATES: dict[tuple[str, str], float] = {}


def _rate(scorer, probe: str) -> float:
    key = (scorer.slug, probe)
    if key not in _RATES:
        if probe == "invariance":
            _RATES[key] = style_invariance(scorer, STYLES)["all"]
        else:
            _RATES[key] = {"relation_swap": relation_swap, "count_off_by_one": count_off_by_one}[probe](
                scorer
            )
    return _RATES[key]


@pytest.mark.parametrize("probe", list(MEASURED))
def test_no_base_falls_below_what_it_measured(scorer, probe):
    rate = _rate(scorer, probe)
    assert rate >= MEASURED[probe][scorer.slug] - MARGIN, (scorer.slug, probe, rate)


@pytest.mark.parametrize("probe", list(TARGETS))
def test_the_issue_targets(scorer, probe, request):
    measured = MEASURED[probe][scorer.slug]
    if measured < TARGETS[probe]:
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason=f"{scorer.slug} measures {measured:.3f} on {probe}, short of the target "
                f"{TARGETS[probe]:.2f} (docs/styles.md says why)",
            )
        )
    assert _rate(scorer, probe) >= TARGETS[probe]


#: the relation swap past the clear pair: three groups of small or large shapes, drawn in the
#: held-out family. Measured with the scorer's grounding (asked as a question: 0.391 and 0.484); the
#: Gemma base before stage 3's labels were bound and balanced measured 0.922
HARD_SWAP = {"fastvlm_qwen2": 0.938, "fastvlm_gemma": 0.875}


def test_relations_hold_with_three_groups_in_the_held_out_family(scorer):
    rate = relation_swap(scorer, groups=3, style=BOOK.heldout[0], any_size=True)
    assert rate >= HARD_SWAP[scorer.slug] - MARGIN, (scorer.slug, rate)
