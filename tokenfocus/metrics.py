"""NTIRE 2025 Track 1 metrics: SRCC, KRCC, PLCC after a 4-parameter logistic, element accuracy."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit

log = logging.getLogger(__name__)


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The challenge's 4-parameter logistic."""
    with np.errstate(over="ignore"):  # exp overflow is a saturated logistic, not an error
        return _logistic4(x, b1, b2, b3, b4)


def _logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """:func:`logistic4` for a caller that already ignores overflow: a fit calls it ~1,000 times,
    and entering ``np.errstate`` each time was a quarter of the fit's cost (the same bits)."""
    return b2 + (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4)))


def srcc(pred: Sequence[float], gt: Sequence[float]) -> float:
    """Spearman rank correlation."""
    return float(stats.spearmanr(pred, gt).statistic)


def krcc(pred: Sequence[float], gt: Sequence[float]) -> float:
    """Kendall rank correlation."""
    return float(stats.kendalltau(pred, gt).statistic)


def plcc(pred: Sequence[float], gt: Sequence[float]) -> float:
    """Pearson between the predictions and the logistic fitted from ground truth to predictions.

    As the official script does: the fit runs from ``gt`` to ``pred`` (that orientation), with
    initial ``[max(pred), min(pred), mean(gt), std(gt)]``; plain Pearson if the fit fails.
    """
    p, g = np.asarray(pred, dtype=float), np.asarray(gt, dtype=float)
    try:
        with warnings.catch_warnings(), np.errstate(over="ignore"):
            warnings.simplefilter("ignore", OptimizeWarning)
            beta, _ = curve_fit(
                _logistic4, g, p, p0=[p.max(), p.min(), g.mean(), g.std() or 1.0], maxfev=100000
            )
        fitted = logistic4(g, *beta)
    except (RuntimeError, ValueError, TypeError) as exc:  # TypeError: fewer points than parameters
        log.warning("4PL fit failed (%s); PLCC without it", exc)
        fitted = g
    # A fit that settles on a constant (its step beyond every label) gives no correlation. Tested
    # by the values' range: ten equal floats can have a standard deviation of 1e-16, their mean
    # rounded, and Pearson is then NaN (measured on a 10-pair split of an AMD host).
    if np.ptp(fitted) == 0 or np.ptp(p) == 0:
        return 0.0
    return float(stats.pearsonr(p, fitted).statistic)


def element_accuracy(pred: Iterable[float], gt: Iterable[float], threshold: float = 0.5) -> float:
    """Share of elements where prediction and label fall on the same side of the threshold."""
    p, g = np.asarray(list(pred), dtype=float), np.asarray(list(gt), dtype=float)
    if p.size == 0:
        return float("nan")
    return float(np.mean((p >= threshold) == (g >= threshold)))


def ntire_score(srcc_value: float, plcc_value: float, acc: float) -> float:
    """``SRCC/4 + PLCC/4 + acc/2``."""
    return 0.25 * srcc_value + 0.25 * plcc_value + 0.5 * acc


def evaluate(
    pred_total: Sequence[float],
    gt_total: Sequence[float],
    pred_elements: Iterable[float] = (),
    gt_elements: Iterable[float] = (),
) -> dict[str, float]:
    """All metrics of one prediction set; ``final`` is the NTIRE score (rounded to 4 places).

    Undefined values (a constant prediction has no rank correlation; no elements, no accuracy)
    are None, so the result is always valid JSON.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.simplefilter("ignore", stats.NearConstantInputWarning)
        s, p, k = srcc(pred_total, gt_total), plcc(pred_total, gt_total), krcc(pred_total, gt_total)
    acc = element_accuracy(pred_elements, gt_elements)
    out = {"srcc": s, "plcc": p, "krcc": k, "element_acc": acc, "n": len(pred_total)}
    out["final"] = round(ntire_score(s, p, acc), 4)
    return {key: (None if isinstance(v, float) and np.isnan(v) else v) for key, v in out.items()}
