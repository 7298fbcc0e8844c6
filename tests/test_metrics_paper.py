"""MMSA-style sentiment metrics (CMU-MOSI/MOSEI and CH-SIMS) against values worked out by hand in the comments."""

from __future__ import annotations

import math
import warnings

import pytest

from egmf_core.research.metrics import mosei_regression_report, sims_regression_report

# labels: -3    -1.2   0     0.4   2.6   1.5
# preds:  -2.4   0.3  -0.2   0.6   3.5   1.4
MOSEI_LABELS = [-3.0, -1.2, 0.0, 0.4, 2.6, 1.5]
MOSEI_PREDS = [-2.4, 0.3, -0.2, 0.6, 3.5, 1.4]


def test_mosei_report_hand_computed() -> None:
    r = mosei_regression_report(MOSEI_PREDS, MOSEI_LABELS)
    assert r["n"] == 6
    # |errors| = 0.6 + 1.5 + 0.2 + 0.2 + 0.9 + 0.1 = 3.5 -> 3.5 / 6
    assert r["mae"] == pytest.approx(3.5 / 6, abs=1e-6)
    # has-0: truth >= 0 = F F T T T T, pred >= 0 = F T F T T T -> 4 of 6 right.
    assert r["acc2_has0"] == pytest.approx(400 / 6)
    # class True (support 4): TP 3, FP 1, FN 1 -> F1 0.75; class False (support 2): TP 1, FP 1, FN 1 -> F1 0.5.
    # weighted: (4 * 0.75 + 2 * 0.5) / 6 = 4 / 6
    assert r["f1_has0"] == pytest.approx(400 / 6)
    # non-0: the clip labelled 0 is dropped; truth > 0 = F F T T T, pred > 0 = F T T T T -> 4 of 5.
    assert r["n_non0"] == 5
    assert r["acc2_non0"] == pytest.approx(80.0)
    # class True (support 3): P 3/4, R 1 -> F1 6/7; class False (support 2): P 1, R 1/2 -> F1 2/3.
    # weighted: (3 * 6/7 + 2 * 2/3) / 5 = 82/105
    assert r["f1_non0"] == pytest.approx(100 * 82 / 105)
    # acc7: clip to [-3, 3] then round. truth -> -3 -1 0 0 3 2 (1.5 -> 2), preds -> -2 0 0 1 3 1: 2 of 6 equal.
    assert r["acc7"] == pytest.approx(200 / 6)
    # acc5: clip to [-2, 2] then round. truth -> -2 -1 0 0 2 2, preds -> -2 0 0 1 2 1: 3 of 6 equal.
    assert r["acc5"] == pytest.approx(50.0)
    assert -1.0 <= r["corr"] <= 1.0


def test_mosei_rounding_is_half_to_even_like_numpy() -> None:
    # MMSA rounds with np.round: 0.5 -> 0, 2.5 -> 2, -0.5 -> -0, so these predictions all hit their label's class.
    r = mosei_regression_report([0.0, 2.0, 0.0], [0.5, 2.5, -0.5])
    assert r["acc7"] == 100.0 and r["acc5"] == 100.0


def test_mosei_zero_is_positive_in_has0_and_dropped_in_non0() -> None:
    # has-0: truth >= 0 = T F, pred >= 0 = T T -> 1 of 2 (a 0 prediction counts as positive).
    # non-0: the clip labelled 0 is dropped; the other has truth > 0 = F and pred > 0 = F -> 1 of 1.
    r = mosei_regression_report([0.0, 0.0], [0.0, -1.0])
    assert r["acc2_has0"] == 50.0
    assert r["n_non0"] == 1 and r["acc2_non0"] == 100.0


def test_pearson_by_hand() -> None:
    # t = 1 2 3, p = 1 3 2: deviations -1 0 1 and -1 1 0 -> cov 1, variances 2 and 2 -> r = 1/2.
    assert mosei_regression_report([1.0, 3.0, 2.0], [1.0, 2.0, 3.0])["corr"] == pytest.approx(0.5)
    assert mosei_regression_report([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])["corr"] == pytest.approx(1.0)
    assert mosei_regression_report([3.0, 2.0, 1.0], [1.0, 2.0, 3.0])["corr"] == pytest.approx(-1.0)


def test_all_zero_labels_and_constant_predictions_do_not_crash() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from corrcoef, no sklearn warnings
        r = mosei_regression_report([0.1, -0.2, 0.0], [0.0, 0.0, 0.0])
        assert r["n_non0"] == 0 and math.isnan(r["acc2_non0"]) and math.isnan(r["f1_non0"])
        assert r["acc2_has0"] == pytest.approx(200 / 3)  # preds >= 0: T F T vs truth all T
        assert math.isnan(r["corr"])  # constant labels
        r = mosei_regression_report([0.5, 0.5, 0.5], [-1.0, 0.5, 2.0])
        assert math.isnan(r["corr"])  # constant predictions
        assert r["mae"] == pytest.approx((1.5 + 0.0 + 1.5) / 3)
        s = sims_regression_report([0.2, 0.2], [-0.4, 0.6])
        assert math.isnan(s["corr"])
        assert s["f1"] == pytest.approx(100 / 3)  # class 0: F1 0 (never predicted), class 1: P 1/2 R 1 -> 2/3


def test_sims_report_hand_computed() -> None:
    labels = [-1.0, -0.6, 0.0, 0.2, 0.8, 1.0]
    preds = [-1.4, -0.05, 0.05, 0.1, 0.6, 0.9]  # -1.4 is clipped to -1 first
    r = sims_regression_report(preds, labels)
    assert r["n"] == 6
    # |errors| after clipping = 0 + 0.55 + 0.05 + 0.1 + 0.2 + 0.1 = 1.0 -> 1/6
    assert r["mae"] == pytest.approx(1 / 6, abs=1e-6)
    # 2 classes (<= 0 | > 0): truth 0 0 0 1 1 1, preds 0 0 1 1 1 1 -> 5 of 6.
    assert r["acc2"] == pytest.approx(500 / 6)
    # class 0 (support 3): P 1, R 2/3 -> F1 0.8; class 1 (support 3): P 3/4, R 1 -> F1 6/7; weighted = mean.
    assert r["f1"] == pytest.approx(100 * (0.8 + 6 / 7) / 2)
    # 3 classes (<= -0.1 | (-0.1, 0.1] | > 0.1): truth 0 0 1 2 2 2, preds 0 1 1 1 2 2 (0.1 is in the middle class)
    # -> 4 of 6.
    assert r["acc3"] == pytest.approx(400 / 6)
    # 5 classes (edges -0.7 -0.1 0.1 0.7): truth 0 1 2 3 4 4, preds 0 2 2 2 3 4 -> 3 of 6.
    assert r["acc5"] == pytest.approx(50.0)


def test_sims_correlation_uses_clipped_values() -> None:
    # t = -1 0 1, p = -3 0 0.5 -> clipped -1 0 0.5, mean -1/6: deviations -5/6 1/6 4/6.
    # cov = 5/6 + 4/6 = 1.5; var_t = 2, var_p = 42/36 -> r = 1.5 / sqrt(2 * 7/6) = 0.98198...
    r = sims_regression_report([-3.0, 0.0, 0.5], [-1.0, 0.0, 1.0])
    assert r["corr"] == pytest.approx(1.5 / math.sqrt(7 / 3))
    assert r["mae"] == pytest.approx(0.5 / 3)


@pytest.mark.parametrize("report", [mosei_regression_report, sims_regression_report])
def test_bad_inputs_are_refused(report) -> None:
    with pytest.raises(ValueError, match="preds has 2 values but labels has 3"):
        report([0.0, 1.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        report([], [])
    with pytest.raises(ValueError, match="preds has 1 non-finite"):
        report([float("nan"), 1.0], [0.0, 1.0])
