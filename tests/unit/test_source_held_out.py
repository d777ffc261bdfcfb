"""The pure parts of benchmarks/source_held_out.py: the intervals, the hold-out plan, the samples."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.source_held_out import (  # noqa: E402
    bootstrap_macro,
    build_fold,
    held_out_sources,
    sample,
    wilson_interval,
)


def test_wilson_known_values_and_edges() -> None:
    lo, hi = wilson_interval(90, 100)
    assert lo == pytest.approx(0.8256, abs=1e-3) and hi == pytest.approx(0.9448, abs=1e-3)
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and 0.83 < lo < 0.85  # all right on 20 documents still leaves ~16 points of doubt
    assert wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # narrower with more documents at the same proportion
    assert np.diff(wilson_interval(900, 1000))[0] < np.diff(wilson_interval(90, 100))[0]


def test_bootstrap_macro_weights_sources_equally() -> None:
    big_right, small_wrong = np.ones(1000, dtype=bool), np.zeros(10, dtype=bool)
    lo, hi = bootstrap_macro([big_right, small_wrong], reps=500)
    assert lo == hi == 0.5  # no spread within either source: the macro mean is exactly 0.5
    mixed = np.arange(200) % 4 != 0  # 75% right
    lo, hi = bootstrap_macro([mixed, np.ones(50, dtype=bool)], reps=1000)
    assert lo < 0.875 < hi and hi - lo < 0.1
    assert bootstrap_macro([mixed], seed=3) == bootstrap_macro([mixed], seed=3)


def test_held_out_sources_skips_single_source_domains() -> None:
    plan = held_out_sources({
        "code": Counter(python_stdlib=10),
        "medicine": Counter(icd10=3, hpo=7),
        "general": Counter(wordnet=2, gcide=5),
    })
    assert plan == [("general", "gcide"), ("general", "wordnet"), ("medicine", "hpo"), ("medicine", "icd10")]


@dataclass(frozen=True)
class Doc:
    id: str
    text: str
    source: str


def test_sample_and_fold_never_train_on_the_held_out_source() -> None:
    docs = [Doc(f"d{i}", f"text {i}", "a" if i % 3 else "b") for i in range(60)]
    assert sample(docs, None, key=lambda d: d.id) == docs
    picked = sample(docs, 10, key=lambda d: d.text)
    assert picked == sample(list(reversed(docs)), 10, key=lambda d: d.text)  # file order does not matter
    corpora = {
        "x": {"train": docs, "val": docs[:30]},
        "y": {"train": [Doc(f"y{i}", f"y {i}", "c") for i in range(40)], "val": [Doc("yv", "y v", "c")]},
    }
    recipe = SimpleNamespace(max_train_documents_per_domain=25, max_val_documents_per_domain=5)
    full = build_fold(corpora, ["x", "y"], recipe, None)
    held = build_fold(corpora, ["x", "y"], recipe, "b")
    assert len(full.train) == 50 and {d.source for d in full.train} == {"a", "b", "c"}
    assert {d.source for d in held.train + held.val} == {"a", "c"}
    assert len(held.train) == 50 and list(held.train_y).count(0) == 25  # refilled from the remaining source
    assert [d.id for d in held.train[25:]] == [d.id for d in full.train[25:]]  # other domains are untouched


def test_candidate_helpers_average_prototypes_and_pieces() -> None:
    from benchmarks.held_out_candidates import average, pieces, prototypes

    a = np.log(np.array([[0.9, 0.1], [0.5, 0.5]]))
    b = np.log(np.array([[0.1, 0.9], [0.5, 0.5]]))
    np.testing.assert_allclose(np.exp(average(a, b)), [[0.5, 0.5], [0.5, 0.5]])
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) / np.array([[1.0], [1.0], [np.sqrt(2)]])
    p = prototypes(x, np.array([0, 1, 1]), 2)
    np.testing.assert_allclose(p[0], [1.0, 0.0])
    assert np.isclose(np.linalg.norm(p[1]), 1.0) and p[1][1] > p[1][0] > 0
    text = "Fever and cough in children. Raised blood pressure in adults.\nA rash that spreads quickly over days."
    got = pieces(text, "doc-1")
    assert got == pieces(text, "doc-1") and 1 <= len(got) <= 3  # deterministic, distinct, at most three
    assert all(p in text.replace("\n", " ") or all(s in text for s in p.split(". ")) for p in got)
    assert pieces("One sentence only, long enough to count.", "doc-2") == []
