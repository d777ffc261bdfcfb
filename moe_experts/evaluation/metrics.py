"""Classification and calibration metrics shared by router training and the evaluator.

Plain numpy, so each is checked against hand-computed values in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else float("nan")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return out


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, labels: list[int] | None = None) -> float:
    """Unweighted mean of per-class F1 over ``labels``, or over classes present in the truth or the predictions.

    Pass ``labels`` when only some classes were evaluated: a class that is never true there
    has F1 0 by construction and would drag the mean down for nothing.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    if labels is not None:
        present = np.zeros(n_classes, dtype=bool)
        present[list(labels)] = True
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean()) if present.any() else float("nan")


def log_loss(probs: np.ndarray, y_true: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class, probs (N, C)."""
    p = probs[np.arange(len(y_true)), y_true]  # (N,)
    return float(-np.mean(np.log(np.clip(p, eps, 1.0))))


@dataclass(frozen=True)
class Reliability:
    """Per-bin mean confidence, accuracy and count of the top-1 prediction (equal-width bins)."""

    edges: tuple[float, ...]
    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]
    count: tuple[int, ...]

    @property
    def ece(self) -> float:
        n = sum(self.count)
        return float(
            sum(c * abs(a - f) for c, a, f in zip(self.count, self.accuracy, self.confidence) if c) / n
        ) if n else float("nan")


def reliability(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> Reliability:
    conf = probs.max(axis=1)  # (N,)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed bins, (0, 1/15], ..., so a confidence of exactly 1 lands in the last one.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    confs, accs, counts = [], [], []
    for b in range(n_bins):
        mask = which == b
        counts.append(int(mask.sum()))
        confs.append(float(conf[mask].mean()) if mask.any() else 0.0)
        accs.append(float(correct[mask].mean()) if mask.any() else 0.0)
    return Reliability(tuple(float(e) for e in edges), tuple(confs), tuple(accs), tuple(counts))


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """ECE of the top-1 confidence: sum over bins of (bin share) x |accuracy - mean confidence|."""
    return reliability(probs, y_true, n_bins).ece
