"""Train the document-level router from every card's corpus (``moe-experts train-router``).

1. embed the train and validation documents of every domain (chunked, so
   nothing past the embedder's window is dropped);
2. index the training vectors in FAISS (exact, or HNSW / IVF above a size,
   with recall against exact search measured and recorded);
3. supervised: fit a logistic regression and score a kNN vote over the FAISS
   neighbours, and a lexical scorer (tf-idf of word n-grams, logistic
   regression); keep whichever of logreg, knn, their average (combined) and
   the average of all three (hybrid) has the lowest validation log loss after
   calibration (or the recipe's choice);
   unsupervised (c-BTM): FAISS k-means on the training vectors, clusters mapped
   to experts by the validation majority;
4. calibrate (temperature or isotonic) on one half of validation, report
   accuracy, macro-F1 and expected calibration error on the other half;
5. tune the abstain thresholds on validation: a confidence floor, a
   nearest-document similarity floor ("far from every training document"), and
   the "no domain" gate (a logistic model of in-domain documents against
   synthetic text of no domain, its threshold set so at most 1% of in-domain
   validation documents abstain);
6. write ``routers/doc/`` atomically with a manifest of what it was built from.

The test split is never read here: it belongs to the evaluator.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from moe_experts.config import ExpertCard
from moe_experts.recipes import DocRouterRecipe
from moe_experts.data.build import iter_documents, require_corpora
from moe_experts.data.split import unit_hash
from moe_experts.errors import DataError, StaleArtifactError
from moe_experts.modeling.stages import Setup
from moe_experts.progress import Progress
from moe_experts.routing.doc_fit import FORMAT_VERSION, Split, fit_router
from moe_experts.routing.doc_router import DocRouter, check_compatible, router_dir, router_manifest
from moe_experts.routing.embedder import Embedder
from moe_experts.workspace import writable, write_json_atomic

logger = logging.getLogger(__name__)

EMBED_BLOCK = 256  # documents per embedding call, so progress moves and memory stays flat


def corpus_hashes(setup: Setup) -> dict[str, dict[str, str]]:
    """Content hashes of the train and val splits the router learns from, per domain."""
    manifest = require_corpora(setup.workspace, setup.registry, setup.preset.data)
    return {d: {s: manifest["domains"][d][s] for s in ("train", "val")} for d in setup.registry.domains}


def _read_split(setup: Setup, split: str, limit: int | None, exclude_source: str | None = None) -> Split:
    ids, texts, labels = [], [], []
    for label, card in enumerate(setup.registry.cards):
        # a deterministic sample that does not depend on file order: the lowest content hashes
        doc_ids, doc_texts = domain_sample(setup, card.domain, split, limit, exclude_source)
        if not doc_ids:
            raise DataError(f"domain '{card.domain}' has an empty {split} split; the router cannot learn it",
                            hint="add sources to its card, then `moe-experts data build --force`")
        ids += doc_ids
        texts += doc_texts
        labels += [label] * len(doc_ids)
    return Split(ids, texts, np.asarray(labels, dtype=np.int64))


def embed_cached(
    setup: Setup, embedder: Embedder, ids: list[str], texts: list[str], *, max_windows: int | None = None,
) -> np.ndarray:
    """Embeddings (N, D) of documents (of their first ``max_windows`` windows), reusing those already computed.

    On CPU, embedding is the slow part of training a router (~10-60 documents/s on
    2 cores); the cache in ``embeddings/<weights hash>/`` makes retraining with
    another recipe, the benchmarks and the evaluator cost nothing extra.
    """
    folder = setup.workspace.embeddings_dir(embedder.info.sha256)
    precision = getattr(embedder, "precision", "fp32")
    if precision != "fp32":  # vectors of one precision per cache
        folder = folder.with_name(f"{folder.name}-{precision}")
    if max_windows is not None:  # a router that reads only a request's first windows
        folder = folder.with_name(f"{folder.name}-first{max_windows}")
    path = folder / "vectors.npy"
    cached: dict[str, int] = {}
    ids_cached: list[str] = []  # row i of vectors is ids_cached[i]
    vectors = np.zeros((0, embedder.dim), dtype=np.float32)
    if path.exists() and (folder / "ids.json").exists():
        vectors = np.load(path, allow_pickle=False)
        ids_cached = json.loads((folder / "ids.json").read_text())
        if len(ids_cached) == len(vectors):
            cached = {doc_id: i for i, doc_id in enumerate(ids_cached)}
        else:  # a rewrite was interrupted between its two files: the rows no longer match their ids
            logger.warning("embedding cache %s is inconsistent (%d ids, %d vectors); embedding afresh", folder,
                           len(ids_cached), len(vectors))
            ids_cached, vectors = [], np.zeros((0, embedder.dim), dtype=np.float32)
    # Each missing id once: a call may name one text twice (content-addressed ids of identical texts).
    text_of = dict(zip(ids, texts))
    missing = list(dict.fromkeys(doc_id for doc_id in ids if doc_id not in cached))
    if missing:
        logger.info("embedding %d documents (%d reused from %s)", len(missing), len(ids) - len(missing), folder)
        parts = []
        with Progress("embedding", total=len(missing), unit="doc") as bar:
            for start in range(0, len(missing), EMBED_BLOCK):
                block = missing[start : start + EMBED_BLOCK]
                parts.append(embedder.embed([text_of[doc_id] for doc_id in block], max_windows=max_windows))
                bar.update(len(block))
        all_ids = [*ids_cached, *missing]  # the rows' ids, in row order
        vectors = np.concatenate([vectors, *parts])
        if not writable(folder, setup.workspace):  # a read-only workspace (eval --out, a served copy): use them, cache nothing
            logger.warning("embeddings: the workspace is read-only; not caching them in %s", folder)
            cached = {doc_id: i for i, doc_id in enumerate(all_ids)}
            return vectors[[cached[doc_id] for doc_id in ids]]
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-vectors-{os.getpid()}.npy"
        np.save(tmp, vectors)
        tmp.replace(path)  # vectors first: ids.json only ever names rows that exist
        write_json_atomic(folder / "ids.json", all_ids)
        cached = {doc_id: i for i, doc_id in enumerate(all_ids)}
    return vectors[[cached[doc_id] for doc_id in ids]]


def train_doc_router(setup: Setup, recipe: DocRouterRecipe, *, unsupervised: bool = False) -> dict[str, Any]:
    """Build ``routers/doc`` from every card's train and val documents and return its manifest."""
    router = fit_doc_router(setup, recipe, unsupervised=unsupervised)
    router.save(router_dir(setup.workspace.root))
    return router.manifest


def fit_doc_router(setup: Setup, recipe: DocRouterRecipe, *, unsupervised: bool = False,
                   exclude_source: str | None = None, embedder: Embedder | None = None) -> DocRouter:
    """The document router over the cards' train and val documents, in memory (``save`` writes it).

    A thin wrapper over ``fit_router``: it reads the workspace's splits, reuses cached embeddings (so a
    refit after adding or removing an expert embeds only documents it has not seen), and records the
    cards and corpus hashes. ``exclude_source`` leaves one corpus source's documents out (the
    source-held-out measurement); ``embedder`` reuses one already loaded (for bulk embedding).
    """
    hashes = corpus_hashes(setup)
    train = _read_split(setup, "train", recipe.max_train_documents_per_domain, exclude_source)
    val = _read_split(setup, "val", recipe.max_val_documents_per_domain, exclude_source)
    if embedder is None:
        embedder = Embedder(recipe.embedder, batch_size=recipe.embed_batch_size, precision="auto")  # bulk: bf16 if native
    logger.info("router: embedding %d training and %d validation documents with %s", len(train.texts),
                len(val.texts), embedder.id)
    examples = _card_examples(setup)
    fitted = fit_router(
        train, val, experts=setup.registry.names, domains=setup.registry.domains,
        fallback=setup.registry.fallback.name, recipe=recipe, embedder=embedder,
        embed=lambda split: embed_cached(setup, embedder, split.ids, split.texts),
        examples=examples, prototype_texts=card_prototype_texts(setup.registry.cards), unsupervised=unsupervised,
        extra={"cards_fingerprint": setup.registry.fingerprint(), "corpus_hashes": hashes,
               **({"excluded_source": exclude_source} if exclude_source else {})},
    )
    router = DocRouter.from_fit(fitted, embedder)
    router.manifest["metrics"]["card_examples"] = router.check_examples(examples, fitted.example_vectors)
    return router


def domain_sample(setup: Setup, domain: str, split: str, limit: int | None,
                  exclude_source: str | None = None) -> tuple[list[str], list[str]]:
    """(ids, texts): the documents of one domain's split the router learns from (the same deterministic sample),
    without those of corpus source ``exclude_source``."""
    docs = [d for d in iter_documents(setup.workspace, domain, split)  # type: ignore[arg-type]
            if exclude_source is None or d.source != exclude_source]
    if limit is not None and len(docs) > limit:
        docs = sorted(docs, key=lambda d: unit_hash(d.text, "router-sample"))[:limit]
    return [d.id for d in docs], [d.text for d in docs]


def forget_embeddings(setup: Setup, doc_ids: set[str]) -> int:
    """Drop the cached embeddings of ``doc_ids`` from every embedder's cache; how many rows were dropped."""
    dropped = 0
    for folder in sorted((setup.workspace.root / "embeddings").glob("*")):
        ids_path, vec_path = folder / "ids.json", folder / "vectors.npy"
        if not (ids_path.exists() and vec_path.exists()):
            continue
        ids = json.loads(ids_path.read_text())
        # a document's own row, and its windows' rows (``<id>#window<j>``, embedded to choose how many a router reads)
        keep = [i for i, doc_id in enumerate(ids) if doc_id.split("#window", 1)[0] not in doc_ids]
        if len(keep) == len(ids):
            continue
        vectors = np.load(vec_path, allow_pickle=False)[keep]
        write_json_atomic(ids_path, [ids[i] for i in keep])  # ids first: it then names only rows that exist
        tmp = folder / f".tmp-vectors-{os.getpid()}.npy"
        np.save(tmp, vectors)
        tmp.replace(vec_path)
        dropped += len(ids) - len(keep)
    return dropped


def _card_examples(setup: Setup) -> list[tuple[str, str, bool]]:
    """(expert, text, positive?) for every example prompt of every card."""
    return [
        (card.name, text, positive)
        for card in setup.registry.cards
        for positive, texts in ((True, card.examples.positive), (False, card.examples.negative))
        for text in texts
    ]


def card_prototype_texts(cards: Iterable[ExpertCard]) -> list[tuple[str, str]]:
    """(expert, text): every card's positive examples and its description, what its prototype is the mean of."""
    return [(card.name, text) for card in cards for text in (*card.examples.positive, card.description)]


def doc_router_status(setup: Setup, recipe: DocRouterRecipe, *, unsupervised: bool = False) -> tuple[str, list[str]]:
    """("missing" | "current" | "stale", what differs) of ``routers/doc`` against the workspace and recipe."""
    manifest = router_manifest(router_dir(setup.workspace.root))
    if manifest is None:
        return "missing", []
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
