"""The pure parts of benchmarks/peer_router.py: short requests, semantic-router's scoring rule, the None route,
the timing (turns and summaries), the text-keyed vector store and the command line it shares with
source_held_out.py. Only the last test needs semantic-router itself."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peer_router import (  # noqa: E402
    by_text,
    decision_index,
    first_sentence,
    knn_route_scores,
    latency_summary,
    paired_difference,
    parser,
    take_turns,
    text_key,
    throughput_summary,
)
from benchmarks.source_held_out import VectorCache  # noqa: E402


def test_first_sentence_is_the_first_sentence_of_the_first_line() -> None:
    assert first_sentence("\n\n  The court held. Then it ruled again.\nNext line.") == "The court held."
    assert first_sentence("Is it legal? Yes.") == "Is it legal?"
    assert first_sentence("import os\nimport sys") == "import os"  # no sentence end: the line
    assert first_sentence("version 1.2 of the licence") == "version 1.2 of the licence"  # a dot inside a word
    assert first_sentence("   \n") == ""
    long = "word " * 100
    cut = first_sentence(long, max_chars=42)
    assert len(cut) <= 42 and cut.endswith("word") and long.startswith(cut)


def test_no_route_goes_to_the_fallback() -> None:
    experts = ["code", "general", "law"]
    assert decision_index(None, experts, "general") == 1
    assert decision_index("law", experts, "general") == 2
    with pytest.raises(ValueError):
        decision_index("cooking", experts, "general")  # a route that is no expert is a bug, not a fallback


def semantic_router_loop(sims: np.ndarray, labels: np.ndarray, n_routes: int, k: int, aggregation: str) -> np.ndarray:
    """semantic-router 1.1.1's rule written out as its loop (index/local.py top_scores, routers/indexed.py _query)."""
    agg = {"sum": sum, "max": max, "mean": lambda v: sum(v) / len(v)}[aggregation]
    out = np.zeros((len(sims), n_routes))
    for i, row in enumerate(sims):
        top = np.argsort(row)[::-1][:k]
        for r in range(n_routes):
            hits = [row[j] for j in top if labels[j] == r]
            out[i, r] = agg(hits) if hits else 0.0
    return out


@pytest.mark.parametrize("aggregation", ["sum", "mean", "max"])
def test_knn_route_scores_match_the_loop(aggregation: str) -> None:
    rng = np.random.default_rng(0)
    sims = rng.uniform(-0.2, 1.0, size=(7, 30))  # (N, M)
    labels = rng.integers(0, 4, size=30)  # (M,)
    for k in (1, 5, 20, 50):  # 50 > M: every utterance
        got = knn_route_scores(sims, labels, 4, k, aggregation)  # type: ignore[arg-type]
        np.testing.assert_allclose(got, semantic_router_loop(sims, labels, 4, k, aggregation))


def test_sum_of_nearest_outvotes_one_close_utterance() -> None:
    # one very close 'a' utterance against four fairly close 'b' ones: mean over the top 5 picks a, the sum picks b
    sims = np.asarray([[0.95, 0.8, 0.8, 0.8, 0.8, 0.1]])
    labels = np.asarray([0, 1, 1, 1, 1, 2])
    assert knn_route_scores(sims, labels, 3, 5, "mean").argmax() == 0
    assert knn_route_scores(sims, labels, 3, 5, "sum").argmax() == 1
    np.testing.assert_allclose(knn_route_scores(sims, labels, 3, 5, "sum")[0, 2], 0.0)  # not in the top 5: no score


def test_knn_route_scores_ignore_utterance_order() -> None:
    rng = np.random.default_rng(1)
    sims, labels = rng.uniform(size=(5, 40)), rng.integers(0, 3, size=40)
    perm = rng.permutation(40)
    np.testing.assert_allclose(knn_route_scores(sims, labels, 3, 10, "sum"),
                               knn_route_scores(sims[:, perm], labels[perm], 3, 10, "sum"))


def test_latency_summary_percentiles_and_intervals() -> None:
    seconds = np.linspace(0.001, 0.100, 100)
    s = latency_summary(seconds, reps=300)
    assert s["requests"] == 100
    assert s["p50_ms"] == pytest.approx(1000 * np.percentile(seconds, 50), abs=1e-3)
    assert s["p95_ms"] == pytest.approx(1000 * np.percentile(seconds, 95), abs=1e-3)
    for q in ("p50", "p95"):
        lo, hi = s[f"{q}_interval_95"]
        assert lo <= s[f"{q}_ms"] <= hi and lo < hi
    assert s["p50_ms"] < s["p95_ms"]
    same = latency_summary([0.02] * 10, reps=100)  # no spread: a zero-width interval
    assert same["p50_interval_95"] == same["p95_interval_95"] == [20.0, 20.0]


def test_paired_difference_is_the_median_of_per_request_differences() -> None:
    a = np.asarray([0.010, 0.020, 0.030, 0.040, 0.050])
    d = paired_difference(a, a - 0.002, reps=300)  # every request 2 ms slower
    assert d["median_ms"] == pytest.approx(2.0) and d["interval_95"] == pytest.approx([2.0, 2.0])
    # the background load shifts both routers alike: pairing removes it, where comparing p50s would not
    load = np.asarray([0.0, 0.1, 0.0, 0.2, 0.0, 0.3, 0.0])
    d = paired_difference(0.010 + load, 0.011 + load, reps=300)
    assert d["median_ms"] == pytest.approx(-1.0) and d["interval_95"][1] < 0


def test_take_turns_alternates_routers_item_by_item() -> None:
    calls: list[tuple[str, int]] = []

    def router(name: str) -> Callable[[int], int]:
        def answer(item: int) -> int:  # records its turn, answers with the item doubled
            calls.append((name, item))
            return 2 * item

        return answer

    out = take_turns({"a": router("a"), "b": router("b")}, [1, 2, 3])
    assert calls == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    for name in ("a", "b"):
        seconds, outputs = out[name]
        assert outputs == [2, 4, 6] and len(seconds) == 3 and all(s >= 0 for s in seconds)


def test_command_line_takes_the_shared_arguments_and_the_peer_ones() -> None:
    args = parser().parse_args(["-w", "/tmp/ws", "--per-source", "7", "--top-k", "5", "--requests", "3",
                                "--cache", "/tmp/c", "--sr-cache", "/tmp/s", "--out", "/tmp/o.json"])
    # what source_held_out.prepare reads, then the peer's own
    assert (str(args.workspace), args.per_source, args.cache, args.out) == ("/tmp/ws", 7, Path("/tmp/c"),
                                                                            Path("/tmp/o.json"))
    assert args.recipe == Path("router_training/doc.yaml") and args.cards
    assert (args.top_k, args.aggregation, args.requests, args.sr_cache) == (5, "sum", 3, Path("/tmp/s"))
    assert (args.batch_documents, args.repeats) == (300, 3)


def test_throughput_summary_reports_the_median_run() -> None:
    s = throughput_summary(100, [2.0, 1.0, 4.0])
    assert s["queries_per_s"] == 50.0 and s["range"] == [25.0, 100.0] and s["documents"] == 100


def test_text_vectors_round_trip(tmp_path: Path) -> None:
    # semantic-router's vectors: a VectorCache without embedder, keyed by the text's hash
    store = VectorCache(None, None, tmp_path / "sr")
    assert "a" not in store and text_key("a") not in store
    vecs = np.arange(6, dtype=np.float32).reshape(2, 3)  # (2, D)
    store.add([text_key("a"), text_key("b")], vecs)  # saved as it is added
    again = VectorCache(None, None, tmp_path / "sr")
    assert text_key("a") in again and text_key("c") not in again
    np.testing.assert_array_equal(by_text(again, ["b", "a", "b"]), vecs[[1, 0, 1]])
    assert by_text(again, ["a"]).dtype == np.float32
    with pytest.raises(ValueError):
        store.add([text_key("x")], vecs)  # one vector per key


def test_semantic_router_follows_the_reference_rule_and_none_goes_to_fallback() -> None:
    pytest.importorskip("semantic_router")
    from semantic_router.encoders import DenseEncoder

    from benchmarks.peer_router import router_aggregation, sr_reference, sr_route, sr_router

    def vector(text: str) -> list[float]:  # a deterministic unit vector per text
        rng = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
        v = rng.normal(size=8)
        return list(v / np.linalg.norm(v))

    class FakeEncoder(DenseEncoder):
        def __call__(self, docs: list[str]) -> list[list[float]]:
            return [vector(d) for d in docs]

    experts = ["a", "b", "c"]
    train = [SimpleNamespace(text=f"doc {i}") for i in range(30)]  # Documents, as far as sr_router reads them
    train_y = np.arange(30) % 3
    queries = [f"query {i}" for i in range(25)]
    x = np.asarray([vector(q) for q in queries])  # (Q, D)
    for top_k, aggregation in ((20, "sum"), (5, "mean")):
        router = sr_router(FakeEncoder(name="fake"), train=train, train_y=train_y, experts=experts, top_k=top_k,
                           aggregation=aggregation)  # type: ignore[arg-type]
        assert router.top_k == top_k and router_aggregation(router) == aggregation
        routed, none = sr_route(router, queries, experts, "b")
        assert none == 0
        np.testing.assert_array_equal(routed, sr_reference(router, x, experts))
        # a router over the same index, with a bar no score reaches: every query gets no route, i.e. the fallback
        router.confidence_threshold = 1e9
        routed, none = sr_route(router, queries, experts, "b")
        assert none == len(queries) and (routed == experts.index("b")).all()
