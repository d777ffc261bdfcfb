"""Metric functions against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moe_experts.routing.classifier import (
    accuracy,
    confusion_matrix,
    expected_calibration_error,
    log_loss,
    macro_f1,
    reliability,
)


def test_confusion_and_accuracy():
    y = np.array([0, 0, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(y, p, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert accuracy(y, p) == pytest.approx(4 / 6)


def test_macro_f1_by_hand():
    y = np.array([0, 0, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 2, 0, 2])
    # class 0: tp 1, support 2, predicted 2 -> F1 0.5; class 1: tp 1, s 1, p 2 -> 2/3; class 2: tp 2, s 3, p 2 -> 0.8
    assert macro_f1(y, p, 3) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    # a class nobody has nor predicts does not drag the mean down
    assert macro_f1(y, p, 4) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)


def test_log_loss_by_hand():
    probs = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert log_loss(probs, np.array([0, 1])) == pytest.approx(-(math.log(0.5) + math.log(0.1)) / 2)


def test_ece_by_hand():
    # four predictions: two at confidence 0.9 (one right), two at 0.6 (both right)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    # bins: 0.9 -> |0.5 - 0.9| x 2/4 ; 0.6 -> |1.0 - 0.6| x 2/4
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_perfectly_calibrated_is_zero_and_confidence_one_lands_in_last_bin():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    rel = reliability(probs, np.array([0, 1]), n_bins=15)
    assert rel.count[-1] == 2 and rel.ece == 0.0


def test_macro_f1_over_the_evaluated_labels_only():
    # one evaluated class, 98/100 right, two wrong guesses of another class: F1 of class 0 only
    y_true = np.zeros(100, dtype=int)
    y_pred = np.array([0] * 98 + [1, 1])
    assert macro_f1(y_true, y_pred, 2) == pytest.approx((2 * 98 / (100 + 98) + 0.0) / 2)
    assert macro_f1(y_true, y_pred, 2, labels=[0]) == pytest.approx(2 * 98 / (100 + 98))
