"""Fitting the document router in memory, from labelled texts: no workspace, no files.

Embed train and validation texts; index the training vectors in FAISS; fit a
logistic regression and a kNN vote (or, unsupervised, k-means clusters); keep the
scorer with the lowest calibrated validation log loss; tune the abstain
thresholds on validation. ``DocRouter.fit`` and ``train_doc_router`` (the
workspace's router) are both thin wrappers over ``fit_router``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_experts.recipes import DocRouterRecipe
from moe_experts.data.split import unit_hash
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
from moe_experts.routing.embedder import Embedder
from moe_experts.routing.index import VectorIndex
from moe_experts.workspace import versions

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of the saved router (router.json)
SNIPPET_CHARS = 160  # of each indexed document kept for explanations


@dataclass(frozen=True)
class Split:
    ids: list[str]
    texts: list[str]
    labels: np.ndarray  # (N,) expert index


@dataclass(frozen=True)
class FittedRouter:
    """What fitting produced, before it is a ``DocRouter``: manifest, index, tensors, calibrator, documents."""

    manifest: dict[str, Any]
    index: VectorIndex
    tensors: dict[str, np.ndarray]
    calibrator: Calibrator
    documents: list[dict[str, str]]  # id, domain, snippet of every indexed document
    example_vectors: np.ndarray  # (E, D) the examples' embeddings, for checking where they route


def _metrics(probs: np.ndarray, y: np.ndarray, n: int) -> dict[str, Any]:
    pred = probs.argmax(axis=1)
    return {
        "documents": len(y),
        "accuracy": round(accuracy(y, pred), 5),
        "macro_f1": round(macro_f1(y, pred, n), 5),
        "log_loss": round(log_loss(probs, y), 5),
        "ece": round(expected_calibration_error(probs, y), 5),
    }


def fit_router(
    train: Split, val: Split, *, experts: list[str], domains: list[str], fallback: str, recipe: DocRouterRecipe,
    embedder: Embedder, embed: Callable[[Split], np.ndarray] | None = None,
    examples: Sequence[tuple[str, str, bool]] = (), unsupervised: bool = False, extra: dict[str, Any] | None = None,
) -> FittedRouter:
    """A document router fitted in memory: labels index ``experts``; ``val`` calibrates, tunes and reports.

    ``embed`` turns a split into unit vectors (default: the embedder, no cache); the positive
    ``examples`` (expert, text, positive?) widen the "far" floor and are embedded for checking.
    ``DocRouter.from_fit`` makes the router.
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
    return FittedRouter(manifest, index, tensors, calibrator, documents, x_examples)


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
