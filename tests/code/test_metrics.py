import math

import numpy as np
import pytest

from tokenfocus.metrics import element_accuracy, evaluate, krcc, logistic4, ntire_score, plcc, srcc


def test_rank_correlations_by_hand():
    # ranks of pred: 1,2,3,4 ; gt: 1,3,2,4 -> d^2 = 0+1+1+0 = 2 ; rho = 1 - 6*2/(4*15) = 0.8
    assert srcc([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    # 6 pairs, 1 discordant -> tau = (5 - 1) / 6
    assert krcc([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(4 / 6)


def test_plcc_is_one_for_a_monotone_logistic_relation():
    gt = np.linspace(1, 5, 40)
    pred = logistic4(gt, 4.5, 1.5, 3.0, 0.7)
    assert plcc(pred, gt) == pytest.approx(1.0, abs=1e-6)
    assert plcc(pred, gt) > np.corrcoef(pred, gt)[0, 1]  # the fit removes the non-linearity


def test_plcc_of_equal_values_is_zero_even_where_their_std_is_not():
    # ten equal floats (a 4PL fit's output, measured) whose np.std is 8.9e-16, their mean rounded:
    # Pearson of them is NaN, so the constant guard must not rest on the standard deviation
    level = 4.242272250269781
    assert np.std([level] * 10) != 0
    gt = [13 / 3, 7 / 3, 14 / 3, 7 / 3, 14 / 3, 14 / 3, 14 / 3, 14 / 3, 3.0, 14 / 3]
    assert plcc([level] * 10, gt) == 0.0
    # the measured 10-pair held-out split whose fit settled on that level: its NTIRE score is kept
    pred = [4.208571420103432, 4.236629807762294, 4.315908180895782, 4.265714786433463, 4.153168472681681]
    pred += [4.264670712555542, 4.25777157213923, 4.196004719737061, 4.240748407251066, 4.283534424542169]
    assert not math.isnan(plcc(pred, gt))
    assert evaluate(pred, gt, [0.9], [1.0])["final"] is not None


def test_element_accuracy_and_final_score_by_hand():
    assert element_accuracy([0.9, 0.4, 0.5, 0.2], [1.0, 1.0, 0.5, 0.0]) == pytest.approx(0.75)
    assert ntire_score(0.8, 0.6, 0.9) == pytest.approx(0.2 + 0.15 + 0.45)
    m = evaluate([1, 2, 3, 4], [10, 30, 20, 40], [0.9, 0.4], [1, 1])
    assert m["element_acc"] == 0.5 and m["final"] == round(0.25 * m["srcc"] + 0.25 * m["plcc"] + 0.25, 4)


def test_no_elements_gives_nan_accuracy():
    assert math.isnan(element_accuracy([], []))
    assert evaluate([1, 1, 1], [1, 2, 3])["srcc"] is None  # constant prediction: undefined, JSON-safe
