"""The router's scorers, calibration and abstain threshold, on data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from moe_experts.routing.classifier import (
    Calibrator,
    LexicalModel,
    LogisticModel,
    class_prototypes,
    cluster_log_probs,
    combined_log_probs,
    fit_temperature,
    knn_log_probs,
    log_loss,
    log_softmax,
    mixture_log_probs,
    prototype_log_probs,
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


_LEXICAL_TRAIN = [
    ("The licensee shall indemnify the licensor against any claim arising under this agreement.", 0),
    ("This licence grants permission to copy, modify and distribute the software, provided the notice is kept.", 0),
    ("Warranty disclaimer: the work is provided as is, without warranty of any kind, express or implied.", 0),
    ("The patient presented with acute asthma and was treated with inhaled corticosteroids.", 1),
    ("ICD-10 code J45 covers asthma; J45.9 is asthma, unspecified, in adult patients.", 1),
    ("Hypertension is a chronic elevation of blood pressure treated with diuretics or beta blockers.", 1),
    ("def read_lines(path):\n    with open(path) as f:\n        return f.read().splitlines()", 2),
    ("import numpy as np\nx = np.zeros((3, 3))\nprint(x.sum(axis=1))", 2),
    ("class Stack:\n    def push(self, item):\n        self.items.append(item)", 2),
]


def _lexical() -> LexicalModel:
    texts, y = [t for t, _ in _LEXICAL_TRAIN], np.array([c for _, c in _LEXICAL_TRAIN])
    return LexicalModel.fit(texts, y, 3, ngram_max=2, min_df=1, max_features=10_000, c=10.0, seed=0)


def test_lexical_features_are_exactly_scikit_learns_tfidf():
    """Rebuilt from its plain arrays, the lexical scorer computes what TfidfVectorizer fitted on the same texts does."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [t for t, _ in _LEXICAL_TRAIN]
    model = _lexical()
    reference = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, max_features=10_000).fit(texts)
    assert model.terms == reference.get_feature_names_out().tolist()
    np.testing.assert_allclose(model.idf, reference.idf_, rtol=1e-6)
    queries = ["The licensor grants the licensee a warranty", "asthma asthma asthma in the patient", "def f(): pass",
               "no known word here", ""]
    # its text-by-text scoring gives what scikit-learn's tf-idf features times its weights give
    sparse = log_softmax(np.asarray(reference.transform(queries) @ model.coef.T, dtype=np.float64) + model.intercept)
    np.testing.assert_allclose(model.log_probs(queries), sparse, atol=1e-5)
    rebuilt = LexicalModel.from_tensors(model.terms, model.tensors(), model.ngram_max)
    np.testing.assert_allclose(rebuilt.log_probs(queries), model.log_probs(queries), atol=1e-6)


def test_lexical_scorer_reads_the_words_of_each_class():
    model = _lexical()
    lp = model.log_probs(["the licensee shall keep the notice", "asthma in adult patients", "def push(self, item):"])
    assert lp.shape == (3, 3)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-6)
    assert lp.argmax(axis=1).tolist() == [0, 1, 2]
    assert model.log_probs([]).shape == (0, 3)


def test_lexical_model_refuses_arrays_that_do_not_fit_together():
    model = _lexical()
    with pytest.raises(ValueError, match="do not fit together"):
        LexicalModel(model.terms[:-1], model.idf, model.coef, model.intercept, 2)


def test_combined_averages_any_number_of_distributions():
    a, b, c = (log_softmax(np.array([[2.0, 0.0, -1.0]]) * s) for s in (1.0, 2.0, -1.0))
    np.testing.assert_allclose(np.exp(combined_log_probs(a, b, c)), (np.exp(a) + np.exp(b) + np.exp(c)) / 3)


def test_a_mixture_weighs_its_distributions():
    a = np.log(np.array([[0.9, 0.1], [0.5, 0.5]]))
    b = np.log(np.array([[0.1, 0.9], [0.2, 0.8]]))
    mixed = np.exp(mixture_log_probs([(3.0, a), (1.0, b)]))
    np.testing.assert_allclose(mixed, [[0.7, 0.3], [0.425, 0.575]])
    np.testing.assert_allclose(mixture_log_probs([(0.5, a), (0.5, b)]), combined_log_probs(a, b))
    for bad in ([], [(0.0, a)], [(1.0, a), (-0.5, b)]):
        with pytest.raises(ValueError, match="positive weights"):
            mixture_log_probs(bad)


def test_prototypes_are_unit_class_means_and_pull_towards_the_nearest():
    vectors = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    labels = np.array([0, 0, 1, 1])
    protos = class_prototypes(vectors, labels, 2)
    np.testing.assert_allclose(protos, [[2 ** -0.5, 2 ** -0.5, 0.0], [0.0, 0.0, 1.0]], atol=1e-6)
    q = np.array([[0.6, 0.8, 0.0], [0.0, 0.6, 0.8]])
    lp = prototype_log_probs(q, protos, scale=20.0)
    assert lp.argmax(axis=1).tolist() == [0, 1]
    sims = q @ protos.T
    np.testing.assert_allclose(np.exp(lp[0]), np.exp(20 * sims[0]) / np.exp(20 * sims[0]).sum(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"no prototype text for class\(es\) \[2\]"):
        class_prototypes(vectors, labels, 3)
