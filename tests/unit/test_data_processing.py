"""Cleaning, chunking, deduplication and the content-hash split."""

from __future__ import annotations

import random

from moe_experts.data.clean import chunk, clean, is_language, normalize
from moe_experts.data.dedup import MinHasher, deduplicate
from moe_experts.data.split import SPLITS, assign_split, doc_id


def test_normalize_keeps_indentation_and_folds_blank_runs():
    text = "def f():\r\n    return 1   \r\n\r\n\r\n\r\n\x07x = 2\n"
    assert normalize(text) == "def f():\n    return 1\n\nx = 2"


def test_chunk_respects_limit_and_keeps_all_words():
    rng = random.Random(0)
    paras = [" ".join(rng.choice(["alpha", "beta", "gamma"]) for _ in range(rng.randint(5, 80))) for _ in range(30)]
    text = "\n\n".join(paras)
    pieces = chunk(text, 300)
    assert all(len(p) <= 300 for p in pieces)
    assert " ".join(" ".join(pieces).split()) == " ".join(text.split())


def test_chunk_prefers_paragraph_breaks():
    text = "a" * 100 + "\n\n" + "b" * 100 + "\n\n" + "c" * 100
    assert chunk(text, 210) == ["a" * 100 + "\n\n" + "b" * 100, "c" * 100]


def test_chunk_cuts_overlong_line_at_spaces():
    line = " ".join(["word"] * 100)  # 499 chars, one line
    pieces = chunk(line, 100)
    assert all(len(p) <= 100 for p in pieces)
    assert all(not p.startswith(" ") for p in pieces)


def test_quality_filter():
    assert is_language("The quick brown fox jumps over the lazy dog.")
    assert not is_language("0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07")
    assert not is_language("a" * 1200)  # one absurdly long line
    assert clean("short", min_chars=64, max_chars=2000) == []


def _words(n: int, rng: random.Random) -> list[str]:
    return [f"w{rng.randrange(5000)}" for _ in range(n)]


def test_exact_duplicates_ignore_case_and_whitespace():
    docs = ["Hello   World, this is a test.", "hello world, THIS is a test.", "something else entirely here"]
    result = deduplicate(docs)
    assert result.keep == [0, 2]
    assert result.exact_of == {1: 0}


def test_near_duplicates_found_and_distinct_documents_kept():
    rng = random.Random(1)
    base = [" ".join(_words(150, rng)) for _ in range(200)]
    words = base[7].split()
    near = " ".join(words[:145] + ["edited"] * 5)  # about 0.9 Jaccard on 5-gram shingles
    far = " ".join(words[:60] + _words(90, rng))  # about 0.25
    result = deduplicate([*base, near, far], threshold=0.8)
    assert result.near_of == {200: 7}
    assert 201 in result.keep
    assert len(result.keep) == 201


def test_minhash_estimates_jaccard():
    rng = random.Random(2)
    hasher = MinHasher(num_perm=256)
    a = " ".join(_words(400, rng))
    b = " ".join(a.split()[:300] + _words(100, rng))
    sa, sb = hasher.shingles(a), hasher.shingles(b)
    true = len(set(sa) & set(sb)) / len(set(sa) | set(sb))
    sig = hasher.signatures([a, b])
    assert abs((sig[0] == sig[1]).mean() - true) < 0.1


def test_dedup_is_deterministic_first_occurrence_wins():
    docs = ["same text here for the test"] * 3 + ["other text entirely, nothing alike"]
    assert deduplicate(docs).keep == deduplicate(list(docs)).keep == [0, 3]


def test_split_is_deterministic_order_independent_and_disjoint():
    rng = random.Random(3)
    docs = [" ".join(_words(30, rng)) for _ in range(5000)]
    first = {doc_id(d): assign_split(d, 0.1, 0.1) for d in docs}
    shuffled = docs[:]
    rng.shuffle(shuffled)
    second = {doc_id(d): assign_split(d, 0.1, 0.1) for d in shuffled}
    assert first == second
    by_split = {s: {i for i, sp in first.items() if sp == s} for s in SPLITS}
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"] or by_split["val"] & by_split["test"])
    shares = {s: len(v) / len(docs) for s, v in by_split.items()}
    assert abs(shares["val"] - 0.1) < 0.02 and abs(shares["test"] - 0.1) < 0.02


def test_split_depends_on_content_not_case_or_spacing():
    assert assign_split("Some  Text here", 0.3, 0.3) == assign_split("some text HERE", 0.3, 0.3)


def test_tokenizer_sample_covers_every_source_of_a_domain(tmp_path):
    """The train split lists documents source by source; the tokenizer's budget must not go to the first source only."""
    import json

    from moe_experts.data.tokenizer import _training_texts
    from moe_experts.workspace import Workspace

    folder = tmp_path / "corpora" / "medicine"
    folder.mkdir(parents=True)
    rows = [{"id": f"{source}-{i}", "text": f"{source:>13} text {i:03d} " * 5, "source": source, "ref": str(i)}
            for source in ("hpo", "icd10", "ontology_json") for i in range(100)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    per_doc = len(rows[0]["text"])
    texts = list(_training_texts(Workspace(tmp_path), ["medicine"], chars_per_domain=60 * per_doc))
    assert len(texts) == 60
    counts = {source: sum(t.split()[0] == source for t in texts) for source in ("hpo", "icd10", "ontology_json")}
    assert all(n >= 10 for n in counts.values()), counts  # a third each, give or take; the first source alone before
    assert texts == list(_training_texts(Workspace(tmp_path), ["medicine"], chars_per_domain=60 * per_doc))
