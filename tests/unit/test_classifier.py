"""The router's scorers, calibration and abstain threshold, on data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from moe_experts.routing.classifier import (
    Calibrator,
    LogisticModel,
    cluster_log_probs,
    combined_log_probs,
    fit_temperature,
    knn_log_probs,
    log_loss,
    log_softmax,
    tune_confidence_threshold,
)


def _labels_from(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    p = np.exp(log_softmax(logits))
    return np.array([rng.choice(p.shape[1], p=row) for row in p])


def test_temperature_recovers_the_true_one():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 4)) * 2.0
    y = _labels_from(true_logits, rng)
    # the scorer is over-confident by a factor 3: temperature scaling must find ~3
    t = fit_temperature(true_logits * 3.0, y)
    assert t == pytest.approx(3.0, rel=0.1)


def test_isotonic_calibration_lowers_log_loss_and_keeps_distributions():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3000, 3)) * 2.0
    y = _labels_from(logits, rng)
    raw = log_softmax(logits * 4.0)  # over-confident
    cal = Calibrator.fit("isotonic", raw, y)
    probs = cal(raw)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert log_loss(probs, y) < log_loss(np.exp(raw), y)


def test_knn_vote_weights_by_similarity_and_ignores_missing_neighbours():
    sims = np.array([[0.9, 0.2, 0.1]])
    labels = np.array([[1, 0, -1]])
    p = np.exp(knn_log_probs(sims, labels, 3))[0]
    assert p.argmax() == 1 and p[1] > p[0] > p[2] > 0
    assert p.sum() == pytest.approx(1.0)


def test_logistic_model_rows_follow_expert_order():
    rng = np.random.default_rng(2)
    centers = np.eye(4, 8) * 5
    y = np.repeat(np.arange(4), 50)
    x = centers[y] + rng.normal(size=(200, 8))
    model = LogisticModel.fit(x, y, 4, c=1.0, seed=0)
    assert (model.log_probs(centers).argmax(axis=1) == np.arange(4)).all()


def test_combined_is_the_average():
    a, b = np.log(np.array([[0.8, 0.2]])), np.log(np.array([[0.4, 0.6]]))
    assert np.exp(combined_log_probs(a, b)) == pytest.approx(np.array([[0.6, 0.4]]))


def test_cluster_mass_goes_to_the_mapped_expert():
    centroids = np.eye(3, 4).astype(np.float32)
    x = np.eye(3, 4).astype(np.float32)
    p = np.exp(cluster_log_probs(x, centroids, np.array([1, 1, 0]), 2))
    assert p.argmax(axis=1).tolist() == [1, 1, 0]


def test_threshold_abstains_only_when_the_fallback_is_more_often_right():
    # six confident right answers; two unsure ones whose truth is the fallback (class 0)
    probs = np.array([[0.05, 0.95]] * 6 + [[0.4, 0.6], [0.45, 0.55]])
    y = np.array([1] * 6 + [0, 0])
    t = tune_confidence_threshold(probs, y, fallback=0, max_abstain_rate=0.25)
    assert 0.6 < t <= 0.95
    # no abstaining allowed -> threshold 0
    assert tune_confidence_threshold(probs, y, fallback=0, max_abstain_rate=0.0) == 0.0
    # when the unsure ones are right, abstaining would hurt -> threshold 0
    assert tune_confidence_threshold(probs, np.array([1] * 8), fallback=0, max_abstain_rate=0.5) == 0.0
