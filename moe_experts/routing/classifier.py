"""The document router's posterior over experts: scorers and their calibration.

Every scorer maps embeddings to raw log-probabilities over experts (N, C):

- ``logreg``: multinomial logistic regression on the embeddings (scikit-learn
  fits it; the weights are kept as plain arrays, so no pickle is ever written);
- ``knn``: a similarity-weighted vote of the k nearest training documents;
- ``combined``: the average of the two distributions;
- ``hybrid``: the average of those two and a lexical scorer (``LexicalModel``: tf-idf of word
  n-grams, logistic regression on them), which reads the request's words, not its embedding; and,
  when the experts' cards are known, a share for the card prototypes (``prototype_log_probs``: a
  softmax over the similarity to each card's mean example-and-description vector), which say what a
  domain is in its owner's words rather than in the training sources' style;
- ``clusters``: (unsupervised, c-BTM) a softmax over cosine similarity to k-means
  centroids, each cluster's mass given to the expert it maps to.

A ``Calibrator`` (temperature or per-class isotonic) fitted on validation turns
raw log-probabilities into the posterior the router reports and thresholds.

The classification and calibration metrics at the end score the router when it
is trained and when the evaluator tests it; plain numpy, so each is checked
against hand-computed values in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# Pseudo-votes spread over all experts so a kNN posterior is never exactly 0 or 1.
KNN_SMOOTHING = 0.05
# Sharpness of the softmax over centroid similarities before calibration.
CLUSTER_SCALE = 20.0


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)  # (N, C)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(z))


@dataclass(frozen=True)
class LogisticModel:
    coef: np.ndarray  # (C, D)
    intercept: np.ndarray  # (C,)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, n_classes: int, *, c: float, seed: int) -> LogisticModel:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        clf.fit(x, y)
        # scikit-learn orders rows by the classes it saw; put them in expert order (every class is present).
        coef = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
        intercept = np.zeros(n_classes, dtype=np.float32)
        coef[clf.classes_] = clf.coef_
        intercept[clf.classes_] = clf.intercept_
        return cls(coef=coef, intercept=intercept)

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        return log_softmax(x @ self.coef.T + self.intercept)  # (N, C)


def knn_log_probs(sims: np.ndarray, neighbour_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Similarity-weighted vote of neighbours (N, k) -> log-probabilities (N, C)."""
    votes = np.zeros((sims.shape[0], n_classes), dtype=np.float64)  # (N, C)
    valid = neighbour_labels >= 0  # FAISS pads missing neighbours with -1
    weights = np.where(valid, np.clip(sims, 0.0, None), 0.0)  # (N, k)
    rows = np.repeat(np.arange(sims.shape[0]), sims.shape[1]).reshape(sims.shape)
    np.add.at(votes, (rows[valid], neighbour_labels[valid]), weights[valid])
    votes += KNN_SMOOTHING * np.maximum(weights.sum(axis=1, keepdims=True), 1e-6) / n_classes
    return np.log(votes / votes.sum(axis=1, keepdims=True))


def combined_log_probs(*log_probs: np.ndarray) -> np.ndarray:
    """The log of the mean of the distributions (each (N, C))."""
    return np.log(np.mean([np.exp(lp) for lp in log_probs], axis=0))


def mixture_log_probs(parts: Sequence[tuple[float, np.ndarray]]) -> np.ndarray:
    """The log of the weighted mean of the distributions: (weight, log-probabilities (N, C)) pairs, weights > 0."""
    weights = np.asarray([w for w, _ in parts], dtype=np.float64)
    if len(parts) == 0 or (weights <= 0).any():
        raise ValueError(f"a mixture needs at least one part and positive weights, got {weights.tolist()}")
    mixed = sum(w * np.exp(lp) for w, lp in parts) / weights.sum()
    return np.log(mixed)


def class_prototypes(vectors: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The unit mean vector (C, D) of each class's unit vectors (N, D); every class needs at least one."""
    missing = sorted(set(range(n_classes)) - set(np.asarray(labels).tolist()))
    if missing:
        raise ValueError(f"no prototype text for class(es) {missing}: give every class at least one")
    means = np.stack([vectors[labels == c].mean(axis=0) for c in range(n_classes)])
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def prototype_log_probs(x: np.ndarray, prototypes: np.ndarray, scale: float) -> np.ndarray:
    """A softmax over ``scale`` x the cosine similarity of unit vectors (N, D) to each class prototype (C, D)."""
    return log_softmax(scale * (x @ prototypes.T).astype(np.float64))


class LexicalModel:
    """tf-idf of word n-grams (1 to ``ngram_max`` words, sublinear term frequency, l2-normalised) and a
    multinomial logistic regression on them.

    It is kept as plain data, so no pickle is ever written: the n-gram list (column order), their idf
    (V,), and the regression's weights (C, V) and intercepts (C,). Its tf-idf is exactly what scikit-learn's
    ``TfidfVectorizer`` fitted on the training texts computes (a test checks it).
    """

    def __init__(self, terms: Sequence[str], idf: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                 ngram_max: int) -> None:
        self.terms = list(terms)
        self.idf = np.asarray(idf, dtype=np.float32)  # (V,)
        self.coef = np.asarray(coef, dtype=np.float32)  # (C, V)
        self.intercept = np.asarray(intercept, dtype=np.float32)  # (C,)
        self.ngram_max = int(ngram_max)
        if not (len(self.terms) == len(self.idf) == self.coef.shape[1]) or len(self.intercept) != len(self.coef):
            raise ValueError(f"lexical model: {len(self.terms)} terms, {len(self.idf)} idf values, weights "
                             f"{self.coef.shape} and {len(self.intercept)} intercepts do not fit together")
        # for scoring one request at a time without scipy's per-call overhead (about 1 ms): term -> column,
        # the n-gram analyzer, and the weights as rows per term
        self._column = {t: i for i, t in enumerate(self.terms)}
        self._analyze: Any = None
        self._coef_rows = np.ascontiguousarray(self.coef.T, dtype=np.float64)  # (V, C)

    @classmethod
    def fit(cls, texts: Sequence[str], y: np.ndarray, n_classes: int, *, ngram_max: int, min_df: int,
            max_features: int, c: float, seed: int) -> LexicalModel:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        vec = TfidfVectorizer(ngram_range=(1, ngram_max), sublinear_tf=True, min_df=min(min_df, len(texts)),
                              max_features=max_features, dtype=np.float32)
        x = vec.fit_transform(texts)  # (N, V) sparse
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)
        coef = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
        intercept = np.zeros(n_classes, dtype=np.float32)
        coef[clf.classes_] = clf.coef_
        intercept[clf.classes_] = clf.intercept_
        return cls(vec.get_feature_names_out().tolist(), vec.idf_, coef, intercept, ngram_max)

    def log_probs(self, texts: Sequence[str]) -> np.ndarray:
        """Log-probabilities (N, C) of texts: their l2-normalised tf-idf times the weights, computed text by text
        from the n-gram counts (a scipy sparse product gives the same numbers with about 1 ms a call of overhead)."""
        from collections import Counter

        if self._analyze is None:
            from sklearn.feature_extraction.text import CountVectorizer

            self._analyze = CountVectorizer(ngram_range=(1, self.ngram_max)).build_analyzer()
        z = np.tile(self.intercept.astype(np.float64), (len(texts), 1))  # (N, C)
        for row, text in enumerate(texts):
            counts = Counter(j for g in self._analyze(text) if (j := self._column.get(g)) is not None)
            if not counts:
                continue
            cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            w = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))) * self.idf[cols]
            z[row] += (w / np.linalg.norm(w)) @ self._coef_rows[cols]
        return log_softmax(z)

    def tensors(self) -> dict[str, np.ndarray]:
        """Its arrays, for the router's safetensors file (the terms go to a JSON file beside it)."""
        return {"lexical_idf": self.idf, "lexical_coef": self.coef, "lexical_intercept": self.intercept}

    @classmethod
    def from_tensors(cls, terms: Sequence[str], tensors: dict[str, np.ndarray], ngram_max: int) -> LexicalModel:
        return cls(terms, tensors["lexical_idf"], tensors["lexical_coef"], tensors["lexical_intercept"], ngram_max)


def cluster_log_probs(x: np.ndarray, centroids: np.ndarray, cluster_expert: np.ndarray, n_classes: int) -> np.ndarray:
    """Softmax over centroid similarity (N, K), each cluster's mass summed into its expert -> (N, C)."""
    cluster_p = softmax(CLUSTER_SCALE * (x @ centroids.T))  # (N, K)
    expert_p = np.zeros((x.shape[0], n_classes))  # (N, C)
    for k, e in enumerate(cluster_expert):
        expert_p[:, e] += cluster_p[:, k]
    return np.log(np.clip(expert_p, 1e-12, 1.0))


@dataclass(frozen=True)
class Calibrator:
    """Temperature scaling (one scalar) or per-class isotonic maps, fitted on validation."""

    kind: Literal["temperature", "isotonic"]
    temperature: float = 1.0
    # isotonic: per class, the breakpoints (x, y) of a monotone map of that class's probability
    iso_x: tuple[np.ndarray, ...] = ()
    iso_y: tuple[np.ndarray, ...] = ()

    @classmethod
    def fit(cls, kind: Literal["temperature", "isotonic"], raw: np.ndarray, y: np.ndarray) -> Calibrator:
        if kind == "temperature":
            return cls(kind=kind, temperature=fit_temperature(raw, y))
        from sklearn.isotonic import IsotonicRegression

        p = np.exp(raw)
        xs, ys = [], []
        for c in range(raw.shape[1]):
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p[:, c], (y == c).astype(float))
            xs.append(np.asarray(iso.X_thresholds_, dtype=np.float64))
            ys.append(np.asarray(iso.y_thresholds_, dtype=np.float64))
        return cls(kind=kind, iso_x=tuple(xs), iso_y=tuple(ys))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, C) from raw log-probabilities (N, C)."""
        if self.kind == "temperature":
            return softmax(raw / self.temperature)
        p = np.exp(raw)
        q = np.stack([np.interp(p[:, c], self.iso_x[c], self.iso_y[c]) for c in range(p.shape[1])], axis=1)  # (N, C)
        # A row the maps send to all zeros keeps a small share of the raw distribution, so it stays a distribution.
        q = q + 1e-6 * p
        return q / q.sum(axis=1, keepdims=True)


def fit_temperature(raw: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising validation log loss of softmax(raw / T)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        lp = log_softmax(raw / np.exp(log_t))
        return float(-lp[np.arange(len(y)), y].mean())

    res = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded")
    return float(np.exp(res.x))


def tune_confidence_threshold(probs: np.ndarray, y: np.ndarray, fallback: int, max_abstain_rate: float) -> float:
    """The confidence below which abstaining to the fallback maximises validation accuracy.

    Abstaining is allowed on at most ``max_abstain_rate`` of validation documents;
    ties go to the lowest threshold (abstain as rarely as possible).
    """
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    order = np.argsort(conf)  # abstain on the least confident first
    n = len(y)
    correct_top = pred[order] == y[order]
    correct_fallback = y[order] == fallback
    # accuracy when abstaining on the first j: fallback right on those, top-1 right on the rest
    gain = np.concatenate([[0], np.cumsum(correct_fallback.astype(int) - correct_top.astype(int))])  # (n+1,)
    limit = int(np.floor(max_abstain_rate * n))
    # only cut between distinct confidences, so the threshold reproduces the choice exactly
    sorted_conf = conf[order]
    allowed = [j for j in range(limit + 1) if j == 0 or j == n or sorted_conf[j - 1] < sorted_conf[j]]
    best = max(allowed, key=lambda j: (gain[j], -j))
    return 0.0 if best == 0 else float(sorted_conf[best]) if best < n else float(sorted_conf[-1]) + 1e-6


# ---------------------------------------------------------------------------- metrics
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


# ---------------------------------------------------------------------------- no-domain gate
@dataclass(frozen=True)
class NoDomainGate:
    """A binary logistic model on the embeddings: the probability that a text belongs to no domain at all."""

    coef: np.ndarray  # (D,)
    intercept: np.ndarray  # (1,)

    @classmethod
    def fit(cls, x_in: np.ndarray, x_none: np.ndarray, *, c: float, seed: int) -> NoDomainGate:
        """In-domain documents (N, D) against no-domain texts (M, D), the two classes weighted equally."""
        from sklearn.linear_model import LogisticRegression

        x = np.concatenate([x_in, x_none])  # (N + M, D)
        y = np.concatenate([np.zeros(len(x_in)), np.ones(len(x_none))])
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed, class_weight="balanced").fit(x, y)
        return cls(coef=clf.coef_[0].astype(np.float32), intercept=clf.intercept_.astype(np.float32))

    def scores(self, x: np.ndarray) -> np.ndarray:
        """P(no domain) of unit vectors (N, D) -> (N,), in float64 so a threshold compares exactly."""
        z = x.astype(np.float64) @ self.coef.astype(np.float64) + float(self.intercept[0])  # (N,)
        return 1.0 / (1.0 + np.exp(-z))


def tune_no_domain_threshold(in_domain: np.ndarray, positives: np.ndarray, max_abstain_rate: float) -> float:
    """The score at or above which a request is "no domain": at most ``max_abstain_rate`` of the in-domain
    validation scores reach it, and no positive card example does (they declare what an in-domain request is)."""
    ranked = np.sort(in_domain)[::-1]  # highest first
    allowed = int(np.floor(max_abstain_rate * len(ranked)))
    # the threshold sits just above the (allowed+1)-th highest in-domain score, so at most `allowed` reach it
    bar = float(np.nextafter(ranked[allowed], np.inf)) if allowed < len(ranked) else 0.0
    if len(positives):
        bar = max(bar, float(np.nextafter(positives.max(), np.inf)))
    return min(max(bar, 0.5), 1.0)
