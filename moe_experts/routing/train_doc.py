"""Train the document-level router from every card's corpus (``moe-experts train-router``).

1. embed the train and validation documents of every domain (chunked, so
   nothing past the embedder's window is dropped);
2. index the training vectors in FAISS (exact, or HNSW / IVF above a size,
   with recall against exact search measured and recorded);
3. supervised: fit a logistic regression and score a kNN vote over the FAISS
   neighbours; keep whichever of logreg, knn and their average has the lowest
   validation log loss after calibration (or the recipe's choice);
   unsupervised (c-BTM): FAISS k-means on the training vectors, clusters mapped
   to experts by the validation majority;
4. calibrate (temperature or isotonic) on one half of validation, report
   accuracy, macro-F1 and expected calibration error on the other half;
5. tune the abstain thresholds on validation: a confidence floor, and a
   nearest-document similarity floor ("far from every training document");
6. write ``routers/doc/`` atomically with a manifest of what it was built from.

The test split is never read here: it belongs to the evaluator.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_experts.config import DocRouterRecipe
from moe_experts.data.build import iter_documents, require_corpora
from moe_experts.data.split import unit_hash
from moe_experts.errors import DataError, StaleArtifactError
from moe_experts.modeling.stages import Setup
from moe_experts.progress import Progress
from moe_experts.routing.classifier import (
    Calibrator,
    LogisticModel,
    accuracy,
    cluster_log_probs,
    combined_log_probs,
    confusion_matrix,
    expected_calibration_error,
    knn_log_probs,
    log_loss,
    macro_f1,
    tune_confidence_threshold,
)
from moe_experts.routing.doc_router import (
    DocRouter,
    FORMAT_VERSION,
    ROUTER_JSON,
    SNIPPET_CHARS,
    check_compatible,
    router_dir,
)
from moe_experts.routing.embedder import Embedder
from moe_experts.routing.index import VectorIndex
from moe_experts.workspace import read_json, versions, write_json_atomic

logger = logging.getLogger(__name__)

EMBED_BLOCK = 256  # documents per embedding call, so progress moves and memory stays flat


@dataclass(frozen=True)
class Split:
    ids: list[str]
    texts: list[str]
    labels: np.ndarray  # (N,) expert index


def corpus_hashes(setup: Setup) -> dict[str, dict[str, str]]:
    """Content hashes of the train and val splits the router learns from, per domain."""
    manifest = require_corpora(setup.workspace, setup.registry, setup.preset.data)
    return {d: {s: manifest["domains"][d][s] for s in ("train", "val")} for d in setup.registry.domains}


def _read_split(setup: Setup, split: str, limit: int | None) -> Split:
    ids, texts, labels = [], [], []
    for label, card in enumerate(setup.registry.cards):
        docs = list(iter_documents(setup.workspace, card.domain, split))  # type: ignore[arg-type]
        if not docs:
            raise DataError(f"domain '{card.domain}' has an empty {split} split; the router cannot learn it",
                            hint="add sources to its card, then `moe-experts data build --force`")
        if limit is not None and len(docs) > limit:
            # a deterministic sample that does not depend on file order: the lowest content hashes
            docs = sorted(docs, key=lambda d: unit_hash(d.text, "router-sample"))[:limit]
            logger.info("router: %s %s: sampled %d of its documents (recipe limit)", card.domain, split, limit)
        ids += [d.id for d in docs]
        texts += [d.text for d in docs]
        labels += [label] * len(docs)
    return Split(ids, texts, np.asarray(labels, dtype=np.int64))


def embed_cached(setup: Setup, embedder: Embedder, ids: list[str], texts: list[str]) -> np.ndarray:
    """Embeddings (N, D) of documents, reusing those already computed with the same embedder weights.

    On CPU, embedding is the slow part of training a router (~10-60 documents/s on
    2 cores); the cache in ``embeddings/<weights hash>/`` makes retraining with
    another recipe, the benchmarks and the evaluator cost nothing extra.
    """
    folder = setup.workspace.embeddings_dir(embedder.info.sha256)
    path = folder / "vectors.npy"
    cached: dict[str, int] = {}
    vectors = np.zeros((0, embedder.dim), dtype=np.float32)
    if path.exists() and (folder / "ids.json").exists():
        vectors = np.load(path, allow_pickle=False)
        cached = {doc_id: i for i, doc_id in enumerate(json.loads((folder / "ids.json").read_text()))}
    missing = [i for i, doc_id in enumerate(ids) if doc_id not in cached]
    if missing:
        logger.info("embedding %d documents (%d reused from %s)", len(missing), len(ids) - len(missing), folder)
        parts = []
        with Progress("embedding", total=len(missing), unit="doc") as bar:
            for start in range(0, len(missing), EMBED_BLOCK):
                block = missing[start : start + EMBED_BLOCK]
                parts.append(embedder.embed([texts[i] for i in block]))
                bar.update(len(block))
        all_ids = [*cached, *(ids[i] for i in missing)]
        vectors = np.concatenate([vectors, *parts])
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-vectors-{os.getpid()}.npy"
        np.save(tmp, vectors)
        tmp.replace(path)  # vectors first: ids.json only ever names rows that exist
        write_json_atomic(folder / "ids.json", all_ids)
        cached = {doc_id: i for i, doc_id in enumerate(all_ids)}
    return vectors[[cached[doc_id] for doc_id in ids]]


def _metrics(probs: np.ndarray, y: np.ndarray, n: int) -> dict[str, Any]:
    pred = probs.argmax(axis=1)
    return {
        "documents": len(y),
        "accuracy": round(accuracy(y, pred), 5),
        "macro_f1": round(macro_f1(y, pred, n), 5),
        "log_loss": round(log_loss(probs, y), 5),
        "ece": round(expected_calibration_error(probs, y), 5),
    }


def train_doc_router(setup: Setup, recipe: DocRouterRecipe, *, unsupervised: bool = False) -> dict[str, Any]:
    """Build ``routers/doc`` from every card's train and val documents and return its manifest.

    A thin wrapper over ``fit_router``: it reads the workspace's splits, reuses cached
    embeddings, records the cards and corpus hashes, and saves the router atomically.
    """
    hashes = corpus_hashes(setup)
    train = _read_split(setup, "train", recipe.max_train_documents_per_domain)
    val = _read_split(setup, "val", recipe.max_val_documents_per_domain)
    embedder = Embedder(recipe.embedder, batch_size=recipe.embed_batch_size)
    logger.info("router: embedding %d training and %d validation documents with %s", len(train.texts),
                len(val.texts), embedder.id)
    router = fit_router(
        train, val, experts=setup.registry.names, domains=setup.registry.domains,
        fallback=setup.registry.fallback.name, recipe=recipe, embedder=embedder,
        embed=lambda split: embed_cached(setup, embedder, split.ids, split.texts),
        examples=_card_examples(setup), unsupervised=unsupervised,
        extra={"cards_fingerprint": setup.registry.fingerprint(), "corpus_hashes": hashes},
    )
    router.save(router_dir(setup.workspace.root))
    return router.manifest


def fit_router(
    train: Split, val: Split, *, experts: list[str], domains: list[str], fallback: str, recipe: DocRouterRecipe,
    embedder: Embedder, embed: Callable[[Split], np.ndarray] | None = None,
    examples: Sequence[tuple[str, str, bool]] = (), unsupervised: bool = False, extra: dict[str, Any] | None = None,
) -> DocRouter:
    """A document router fitted in memory: labels index ``experts``; ``val`` calibrates, tunes and reports.

    ``embed`` turns a split into unit vectors (default: the embedder, no cache); ``examples``
    are (expert, text, positive?) prompts routed after fitting and reported.
    """
    started = time.monotonic()
    n = len(experts)
    fallback_index = experts.index(fallback)
    embed = embed or (lambda split: embedder.embed(split.texts))
    t0 = time.monotonic()
    x_train = embed(train)  # (N, D)
    x_val = embed(val)  # (V, D)
    embed_seconds = time.monotonic() - t0

    ir = recipe.index
    index = VectorIndex.build(
        x_train, approximate_above=ir.approximate_above, approximate_kind=ir.approximate_kind,
        hnsw_m=ir.hnsw_m, hnsw_ef_construction=ir.hnsw_ef_construction, hnsw_ef_search=ir.hnsw_ef_search,
        ivf_nprobe=ir.ivf_nprobe, recall_k=ir.recall_k, min_recall=ir.min_recall, seed=recipe.seed,
    )
    logger.info("router: index %s over %d documents (recall@%d %.4f)", index.info.kind, index.info.size,
                index.info.recall_k, index.info.recall_at_k)
    cr = recipe.classifier
    sims, ids = index.search(x_val, cr.knn_k)  # (V, k)
    tensors: dict[str, np.ndarray] = {"doc_labels": train.labels.astype(np.int64)}

    # Validation halves by content hash: A calibrates and chooses, B reports honestly.
    half_a = np.asarray([unit_hash(t, "router-calibration") < 0.5 for t in val.texts])
    half_b = ~half_a
    candidates: dict[str, np.ndarray] = {}
    if unsupervised:
        centroids, cluster_expert, cluster_sizes = _clusters(x_train, x_val, val.labels, n, fallback_index, recipe)
        tensors |= {"centroids": centroids, "cluster_expert": cluster_expert}
        candidates["clusters"] = cluster_log_probs(x_val, centroids, cluster_expert, n)
    else:
        logreg = LogisticModel.fit(x_train, train.labels, n, c=cr.logreg_c, seed=recipe.seed)
        tensors |= {"coef": logreg.coef, "intercept": logreg.intercept}
        labels = np.where(ids >= 0, train.labels[np.clip(ids, 0, None)], -1)
        knn = knn_log_probs(sims, labels, n)
        lr = logreg.log_probs(x_val)
        candidates = {"logreg": lr, "knn": knn, "combined": combined_log_probs(lr, knn)}
        if cr.method != "auto":
            candidates = {cr.method: candidates[cr.method]}

    # Choose the scorer by validation-A log loss after its own calibration on A.
    fitted = {m: Calibrator.fit(cr.calibration, raw[half_a], val.labels[half_a]) for m, raw in candidates.items()}
    scores = {m: log_loss(fitted[m](raw[half_a]), val.labels[half_a]) for m, raw in candidates.items()}
    method = min(scores, key=scores.__getitem__)
    calibrator, raw = fitted[method], candidates[method]
    probs = calibrator(raw)  # (V, C)
    uncalibrated = np.exp(raw)
    comparison = {m: _metrics(fitted[m](r[half_b]), val.labels[half_b], n) for m, r in candidates.items()}

    # Abstain thresholds, tuned on all of validation.
    min_conf = tune_confidence_threshold(probs, val.labels, fallback_index, recipe.abstain.max_abstain_rate)
    nearest = sims[:, 0]
    min_sim = float(np.quantile(nearest, recipe.abstain.far_quantile)) if recipe.abstain.far_quantile > 0 else -1.0
    # Requests are usually shorter than documents, so less similar to them: the positive
    # examples (the declared shape of an in-domain request) must never count as "far".
    examples = list(examples)
    x_examples = embedder.embed([text for _, text, _ in examples]) if examples else np.zeros((0, x_train.shape[1]))
    positive = np.asarray([is_positive for _, _, is_positive in examples], dtype=bool)
    if min_sim > -1.0 and positive.any():
        example_sims, _ = index.search(x_examples, 1)
        min_sim = min(min_sim, float(example_sims[positive, 0].min()) - 1e-3)
    pred = probs.argmax(axis=1)
    abstain = (probs.max(axis=1) < min_conf) | (nearest < min_sim)
    routed = np.where(abstain, fallback_index, pred)

    metrics = {
        "calibration_half": _metrics(probs[half_a], val.labels[half_a], n),
        "held_out_half": _metrics(probs[half_b], val.labels[half_b], n),
        "held_out_half_uncalibrated_ece": round(expected_calibration_error(uncalibrated[half_b], val.labels[half_b]), 5),
        "validation": _metrics(probs, val.labels, n),
        "validation_routed": {
            "accuracy": round(accuracy(val.labels, routed), 5),
            "macro_f1": round(macro_f1(val.labels, routed, n), 5),
            "abstain_rate": round(float(abstain.mean()), 5),
            "confusion": confusion_matrix(val.labels, routed, n).tolist(),
        },
        "methods_on_held_out_half": comparison,
    }
    if unsupervised:
        metrics["clusters"] = {"sizes": cluster_sizes, "expert": [experts[e] for e in cluster_expert]}
    if calibrator.kind == "isotonic":
        for c in range(n):
            tensors[f"iso_x_{c}"], tensors[f"iso_y_{c}"] = calibrator.iso_x[c], calibrator.iso_y[c]

    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": "doc",
        "mode": "unsupervised" if unsupervised else "supervised",
        "experts": list(experts),
        "domains": list(domains),
        "fallback": fallback,
        **(extra or {}),
        "embedder": {"spec": recipe.embedder, **embedder.info.to_json()},
        "recipe": recipe.model_dump(mode="json"),
        "recipe_fingerprint": recipe.fingerprint(),
        "documents": {"train": len(train.texts), "val": len(val.texts)},
        "index": index.info.to_json(),
        "classifier": {
            "method": method,
            "knn_k": cr.knn_k,
            "calibration": {"kind": calibrator.kind, "temperature": calibrator.temperature},
            "validation_log_loss_by_method": {m: round(s, 5) for m, s in scores.items()},
        },
        "thresholds": {"min_confidence": min_conf, "min_similarity": min_sim},
        "metrics": metrics,
        "seconds": {"embedding": round(embed_seconds, 1), "total": round(time.monotonic() - started, 1)},
        "versions": _versions(),
    }
    documents = [{"id": doc_id, "domain": domains[label], "snippet": " ".join(text.split())[:SNIPPET_CHARS]}
                 for doc_id, text, label in zip(train.ids, train.texts, train.labels)]
    router = DocRouter(manifest, index, tensors, calibrator, None, embedder=embedder, documents=documents)
    if examples:
        manifest["metrics"]["card_examples"] = _check_examples(router, examples, x_examples)
    return router


def _card_examples(setup: Setup) -> list[tuple[str, str, bool]]:
    """(expert, text, positive?) for every example prompt of every card."""
    return [
        (card.name, text, positive)
        for card in setup.registry.cards
        for positive, texts in ((True, card.examples.positive), (False, card.examples.negative))
        for text in texts
    ]


def _check_examples(router: DocRouter, examples: list[tuple[str, str, bool]], vectors: np.ndarray) -> dict[str, Any]:
    """Route the cards' example prompts: positives must reach their expert, negatives must not."""
    probs, sims, _ = router.posteriors(vectors)
    wrong = []
    n_pos = n_pos_ok = n_neg = n_neg_ok = 0
    for (name, text, positive), p, s in zip(examples, probs, sims[:, 0]):
        expert, _, _, reason = router.decide(p, float(s))
        ok = (expert == name) if positive else (expert != name)
        n_pos, n_neg = n_pos + positive, n_neg + (not positive)
        n_pos_ok, n_neg_ok = n_pos_ok + (positive and ok), n_neg_ok + (not positive and ok)
        if not ok:
            kind = "positive" if positive else "negative"
            wrong.append({"card": name, "kind": kind, "text": text[:120], "routed_to": expert, "reason": reason})
            logger.warning("router: %s example of card '%s' routed to '%s': %r (%s)", kind, name, expert, text[:80], reason)
    return {"positive": f"{n_pos_ok}/{n_pos}", "negative": f"{n_neg_ok}/{n_neg}", "misrouted": wrong}


def _clusters(
    x_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n: int, fallback: int, recipe: DocRouterRecipe
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Spherical FAISS k-means on the training vectors; each cluster -> its validation majority expert."""
    import faiss

    k = min(recipe.unsupervised.clusters, len(x_train))
    km = faiss.Kmeans(x_train.shape[1], k, niter=recipe.unsupervised.iterations, seed=recipe.seed,
                      spherical=True, verbose=False)
    km.train(np.ascontiguousarray(x_train, dtype=np.float32))
    centroids = km.centroids.astype(np.float32)  # (K, D)
    _, train_assign = km.index.search(x_train, 1)
    _, val_assign = km.index.search(np.ascontiguousarray(x_val, dtype=np.float32), 1)
    cluster_expert = np.full(k, fallback, dtype=np.int64)
    for c in range(k):
        members = y_val[val_assign[:, 0] == c]
        if len(members):
            cluster_expert[c] = int(np.bincount(members, minlength=n).argmax())
    sizes = np.bincount(train_assign[:, 0], minlength=k).tolist()
    return centroids, cluster_expert, sizes


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = versions()
    for dist in ("faiss-cpu", "sentence-transformers", "scikit-learn"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def doc_router_status(setup: Setup, recipe: DocRouterRecipe, *, unsupervised: bool = False) -> tuple[str, list[str]]:
    """("missing" | "current" | "stale", what differs) of ``routers/doc`` against the workspace and recipe."""
    path = router_dir(setup.workspace.root) / ROUTER_JSON
    if not path.exists():
        return "missing", []
    manifest = read_json(path)
    diffs = []
    if manifest.get("format_version") != FORMAT_VERSION:
        diffs.append(f"format version {manifest.get('format_version')} (now {FORMAT_VERSION})")
    if manifest.get("recipe_fingerprint") != recipe.fingerprint():
        diffs.append("the recipe changed")
    if manifest.get("mode") != ("unsupervised" if unsupervised else "supervised"):
        diffs.append(f"mode: built {manifest.get('mode')}")
    try:
        check_compatible(manifest, setup.registry, corpus_hashes(setup), check_embedder=True)
    except StaleArtifactError as exc:
        diffs.append(exc.message.split(":\n  ", 1)[-1])
    return ("stale" if diffs else "current"), diffs
