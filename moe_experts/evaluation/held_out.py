"""Source-held-out routing accuracy: does the document router generalise beyond the texts it learned from?

The test split shares its corpus sources with training (a licence text from the same ScanCode
collection, a definition from the same dictionary), so its routing accuracy says little about text
from elsewhere. Here, for every domain with more than one corpus source and every source S of it:

1. a router is fitted as ``train-router`` fits one (the live router's recipe, its per-domain sample,
   the cards' examples and prototypes) on every domain's train and val documents except S's;
2. it routes up to ``per_source`` of S's documents from the val and test splits (never trained on;
   a fixed sample by id hash), live, as requests are routed;
3. the share that reaches S's domain counts. An abstention goes to the fallback expert, so it is
   right only when S's domain is the fallback's; the top-1 share is reported beside it.

Intervals: Wilson 95% per source; a stratified bootstrap (resampling documents within each source)
for the macro mean over sources. ``eval --source-held-out N`` adds this to the report;
``benchmarks/source_held_out.py`` measures the same on a workspace, with a tf-idf baseline.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
HELD_OUT_SPLITS = ("val", "test")  # the documents a held-out source is scored on


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k/n (95% at z=1.96); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def bootstrap_macro(correct: Sequence[np.ndarray], *, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean over groups of each group's accuracy, resampling within each group."""
    rng = np.random.default_rng(seed)
    means = np.zeros(reps)
    for c in correct:
        c = np.asarray(c, dtype=np.float64)
        draws = rng.integers(0, len(c), size=(reps, len(c)))  # (R, n)
        means += c[draws].mean(axis=1)
    means /= len(correct)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def held_out_sources(sources_by_domain: dict[str, Counter[str]]) -> list[tuple[str, str]]:
    """(domain, source) for every source of every domain that has more than one source, sorted."""
    return [(d, s) for d in sorted(sources_by_domain) if len(sources_by_domain[d]) > 1
            for s in sorted(sources_by_domain[d])]


def share(correct: np.ndarray) -> dict[str, Any]:
    """Accuracy, count and Wilson 95% interval of a boolean array."""
    k, n = int(np.sum(correct)), len(correct)
    lo, hi = wilson_interval(k, n)
    return {"accuracy": round(k / n, 5) if n else None, "correct": k, "interval_95": [round(lo, 5), round(hi, 5)]}


def source_held_out(setup: Any, per_source: int, *, seed: int = 0) -> dict[str, Any]:
    """The report's ``source_held_out`` section for the workspace of ``setup`` (see the module docstring).

    The live document router's recipe is used when there is one (so the measurement is of the router
    being served), else the default recipe. Nothing is written, except embeddings to the workspace's
    cache when it is writable.
    """
    from moe_experts.data.build import iter_documents
    from moe_experts.data.split import unit_hash
    from moe_experts.errors import DataError
    from moe_experts.progress import Progress
    from moe_experts.recipes import DocRouterRecipe
    from moe_experts.routing.doc_router import router_dir, router_manifest
    from moe_experts.routing.embedder import Embedder
    from moe_experts.routing.train_doc import fit_doc_router

    if per_source < 1:
        raise ValueError(f"per_source must be at least 1, got {per_source}")
    started = time.monotonic()
    ws, registry = setup.workspace, setup.registry
    live = router_manifest(router_dir(ws.root))
    recipe, which = DocRouterRecipe(), "the default recipe: no supervised document router is built"
    if live and live.get("mode") == "supervised":
        try:
            recipe, which = DocRouterRecipe.model_validate(live["recipe"]), "the live router's recipe"
        except (KeyError, ValueError) as exc:  # a router built by another version: its recipe no longer reads
            which = f"the default recipe: the live router's does not read ({str(exc).splitlines()[0]})"
    sources = {card.domain: Counter(doc.source for split in SPLITS for doc in iter_documents(ws, card.domain, split))
               for card in registry.cards}
    plan = held_out_sources(sources)
    out: dict[str, Any] = {
        "per_source": per_source,
        "recipe": which,
        "rule": "routed decision (abstentions go to the fallback expert); documents of the held-out source's val "
                "and test splits, never trained on",
        "sources_by_domain": {d: dict(c) for d, c in sources.items()},
        "sources": [], "skipped": [], "macro": None, "seconds": 0.0,
    }
    if not plan:
        out["skipped"].append({"source": None, "reason": "no domain has more than one corpus source"})
        return out
    embedder = Embedder(recipe.embedder, batch_size=recipe.embed_batch_size, precision="auto")  # bulk
    correct_by_source = []
    with Progress("source held out", total=len(plan), unit="source") as bar:
        for domain, source in plan:
            docs = [doc for split in HELD_OUT_SPLITS for doc in iter_documents(ws, domain, split)
                    if doc.source == source]
            docs = sorted(docs, key=lambda doc: unit_hash(doc.id, "source-held-out"))[:per_source]
            if not docs:
                out["skipped"].append({"source": source, "domain": domain,
                                       "reason": "it has no val or test documents to score"})
                bar.update(1)
                continue
            try:
                router = fit_doc_router(setup, recipe, exclude_source=source, embedder=embedder)
            except DataError as exc:  # e.g. the domain's val split is all this source
                out["skipped"].append({"source": source, "domain": domain, "reason": exc.message})
                bar.update(1)
                continue
            decisions, _ = router.route([doc.text for doc in docs])
            expert = registry.by_domain(domain).name
            routed = np.asarray([d.expert == expert for d in decisions])
            top1 = np.asarray([d.predicted == expert for d in decisions])
            correct_by_source.append(routed)
            out["sources"].append({
                "source": source, "domain": domain, "documents": len(docs),
                "train_documents": router.manifest["documents"]["train"],
                "routed": share(routed), "top1": share(top1),
                "abstained": round(float(np.mean([d.abstained for d in decisions])), 5),
                "routed_to": dict(Counter(d.expert for d in decisions).most_common()),
            })
            logger.info("source held out: without %s/%s, %.3f of %d routed to %s", domain, source,
                        routed.mean(), len(docs), domain)
            bar.update(1)
    if correct_by_source:
        lo, hi = bootstrap_macro(correct_by_source, seed=seed)
        out["macro"] = {"accuracy": round(float(np.mean([c.mean() for c in correct_by_source])), 5),
                        "interval_95_bootstrap": [round(lo, 5), round(hi, 5)], "sources": len(correct_by_source)}
    out["seconds"] = round(time.monotonic() - started, 1)
    return out
