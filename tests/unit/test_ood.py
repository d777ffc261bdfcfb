"""The "no domain" gate: synthetic no-domain text, the gate's model and threshold, and the decision it makes."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from moe_experts.routing.classifier import NoDomainGate, tune_no_domain_threshold
from moe_experts.routing.doc_fit import (
    FIT_LANGUAGES,
    HELD_OUT_LANGUAGES,
    NO_DOMAIN_KINDS,
    no_domain_text,
    no_domain_texts,
)
from moe_experts.routing.doc_router import DocRouter
from moe_experts.routing.classifier import Calibrator

SOURCE = [
    "The licensee may redistribute the software provided that this notice is retained.",
    "def parse(path):\n    return open(path).read().split()",
    "Abnormality of the liver with jaundice and an enlarged spleen.",
]


def test_no_domain_texts_cover_every_kind_and_are_deterministic():
    kinds, texts = no_domain_texts(SOURCE, 6, "0/train")
    assert kinds == [k for k in NO_DOMAIN_KINDS for _ in range(6)]
    assert all(t.strip() for t in texts)
    assert no_domain_texts(SOURCE, 6, "0/train") == (kinds, texts)
    assert no_domain_texts(SOURCE, 6, "0/val")[1] != texts  # validation gets other texts than fitting
    by_kind = {k: [t for kk, t in zip(kinds, texts) if kk == k] for k in NO_DOMAIN_KINDS}
    source_words = set(re.findall(r"[a-z]+", " ".join(SOURCE).lower()))
    for text in by_kind["shuffled_words"]:  # the split's own words, letters shuffled
        assert all(sorted(w) in [sorted(s) for s in source_words] for w in re.findall(r"[a-z]+", text.lower()))
    for text in by_kind["emoji"]:
        assert all(ord(c) >= 0x2600 or c == " " for c in text)
    for text in by_kind["number_table"]:
        assert not re.search(r"[g-wyzG-Z]", text)
    for text in by_kind["foreign_script"]:
        assert not re.search(r"[A-Za-z0-9]", text)
    fit_words = set(" ".join(FIT_LANGUAGES.values()).split())
    for text in by_kind["other_language"]:
        assert set(re.findall(r"[^\W\d_']+", text.lower())) <= {w for v in fit_words for w in re.findall(r"[^\W\d_']+", v)}


def test_held_out_languages_share_no_vocabulary_list_with_fitting():
    assert not set(FIT_LANGUAGES) & set(HELD_OUT_LANGUAGES)
    text = no_domain_text("other_language", ["x"] * 20, random.Random(0), languages=HELD_OUT_LANGUAGES)
    held = set(" ".join(HELD_OUT_LANGUAGES.values()).split())
    assert set(re.findall(r"[^\W\d_]+", text.lower())) <= held
    with pytest.raises(ValueError, match="unknown no-domain kind"):
        no_domain_text("poetry", ["x"], random.Random(0))


def test_gate_separates_two_clouds_and_scores_are_probabilities():
    rng = np.random.default_rng(0)
    x_in = rng.normal(size=(60, 8)) + np.eye(8)[0] * 3  # (60, 8)
    x_none = rng.normal(size=(40, 8)) - np.eye(8)[0] * 3  # (40, 8)
    gate = NoDomainGate.fit(x_in, x_none, c=1.0, seed=0)
    assert gate.coef.shape == (8,) and gate.intercept.shape == (1,)
    s_in, s_none = gate.scores(x_in), gate.scores(x_none)
    assert ((0 < s_in) & (s_in < 1)).all() and s_in.dtype == np.float64
    assert (s_in < 0.5).mean() > 0.95 and (s_none > 0.5).mean() > 0.95


def test_threshold_abstains_on_at_most_the_allowed_share_and_on_no_positive_example():
    in_domain = np.array([0.1, 0.2, 0.3, 0.9, 0.95, 0.6, 0.05, 0.1, 0.2, 0.3])  # 10 documents
    # 10% allowed: one may reach the bar, so it sits just above the second highest (0.9)
    bar = tune_no_domain_threshold(in_domain, np.zeros(0), 0.1)
    assert 0.9 < bar <= 0.9 + 1e-9 and (in_domain >= bar).sum() == 1
    assert (in_domain >= tune_no_domain_threshold(in_domain, np.zeros(0), 0.0)).sum() == 0
    # a positive card example scoring 0.97 must pass: the bar moves above it
    assert tune_no_domain_threshold(in_domain, np.array([0.97]), 0.1) > 0.97
    # never below 0.5: "no domain" must at least be the likelier answer
    assert tune_no_domain_threshold(np.full(10, 0.01), np.zeros(0), 0.0) == 0.5


def _router(thresholds: dict) -> DocRouter:
    manifest = {"experts": ["code", "general", "law"], "fallback": "general",
                "classifier": {"method": "logreg", "knn_k": 1},
                "thresholds": {"min_confidence": 0.0, "min_similarity": -1.0, **thresholds}}
    tensors = {"no_domain_coef": np.ones(4, dtype=np.float32), "no_domain_intercept": np.zeros(1, dtype=np.float32)}
    return DocRouter(manifest, None, tensors, Calibrator(kind="temperature"), None)  # type: ignore[arg-type]


def test_decide_abstains_on_no_domain_and_says_so():
    router = _router({"max_no_domain_score": 0.62})
    probs = np.array([0.05, 0.05, 0.9])
    expert, predicted, abstained, reason = router.decide(probs, 0.5, 0.97)
    assert (expert, predicted, abstained) == ("general", "law", True)
    assert reason == "looks like no domain: out-of-domain score 0.970 >= 0.620; sent to the fallback expert 'general'"
    expert, _, abstained, reason = router.decide(probs, 0.5, 0.2)
    assert (expert, abstained) == ("law", False) and "out-of-domain score 0.200 < 0.620" in reason
    vectors = np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])  # scores sigmoid(1), sigmoid(-1)
    assert router.no_domain_scores(vectors) == pytest.approx([0.7311, 0.2689], abs=1e-4)


def test_a_router_saved_before_the_gate_routes_as_before():
    old = _router({})  # no max_no_domain_score in router.json
    assert old.no_domain_gate is None and old.no_domain_scores(np.ones((2, 4))) is None
    expert, _, abstained, reason = old.decide(np.array([0.05, 0.05, 0.9]), 0.5)
    assert (expert, abstained) == ("law", False) and "out-of-domain" not in reason
