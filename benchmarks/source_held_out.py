"""Source-held-out routing accuracy: does the document router generalise beyond the texts it learned from?

Target (issue 14, point 9): macro source-held-out accuracy >= 90% with in-distribution
test accuracy kept >= 98.5%.

The test split shares its corpus sources with training (a licence text from the same
ScanCode collection, a definition from the same dictionary), so test accuracy says
little about text from elsewhere. Here, for every domain with more than one corpus
source, and every source S of it:

1. train the document router (the project's ``fit_router``, the recipe's per-domain
   sample, the cards' example prompts) on every domain's training documents except S's;
   calibrate and tune its thresholds on the validation documents except S's;
2. route up to ``--per-source`` of S's documents from the val and test splits (never
   trained on; sampled by id hash) and count the share that reaches S's domain.

Rule: the routed decision counts, abstention included. An abstention goes to the
fallback expert, so it is wrong unless S's domain is the fallback's (then right);
the top-1 accuracy without abstention is reported beside it. Intervals: Wilson 95%
per source; a stratified bootstrap (resampling documents within each source) for the
macro mean over sources. A tf-idf + logistic regression baseline (as in
routing_accuracy.py) learns from the same training documents and is scored on the
same documents. The in-distribution check fits the router on every source with the
same sampling and scores the test sample of routing_accuracy.py (300 per domain).

`moe-experts eval --source-held-out N` reports the same measurement for a workspace's live router
(``moe_experts/evaluation/held_out.py``); this benchmark adds the in-distribution check, the tf-idf baseline
and per-fold details, and reuses embeddings across runs.

Embeddings are read from the workspace cache (never written); the ones it lacks are
embedded once and kept in ``--cache`` (default /tmp/sho/embeddings) for reruns.

    nice python benchmarks/source_held_out.py -w /tmp/vws --recipe router_training/doc.yaml \
        --per-source 300 --out benchmarks/results/source_held_out-2026-11-30-tiny.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, usable_cores, write_result  # noqa: E402

logger = logging.getLogger("source_held_out")

SPLITS = ("train", "val", "test")
TEST_PER_DOMAIN = 300  # the in-distribution test sample of routing_accuracy.py


# ---------------------------------------------------------------------- pure parts (tests/unit/test_source_held_out.py)
# the intervals and the hold-out plan are the library's, which `eval --source-held-out N` uses too
from moe_experts.evaluation.held_out import bootstrap_macro, held_out_sources, share, wilson_interval  # noqa: E402,F401


def sample(docs: Sequence[Any], limit: int | None, key: Any) -> list[Any]:
    """The ``limit`` documents with the lowest ``key`` (a hash): a sample that does not depend on file order."""
    if limit is None or len(docs) <= limit:
        return list(docs)
    return sorted(docs, key=key)[:limit]


# ---------------------------------------------------------------------- embeddings
class VectorCache:
    """Embeddings by document id: the workspace cache (read only) plus the vectors embedded here (kept in ``folder``).

    Without an embedder (and workspace folder) it is a plain store of vectors by key, filled with ``add``:
    peer_router.py keeps semantic-router's encoder vectors in one, keyed by a hash of the text."""

    def __init__(self, embedder: Any, workspace_folder: Path | None, folder: Path) -> None:
        self.embedder, self.folder = embedder, folder
        self.vectors: dict[str, np.ndarray] = {}
        self.embedded = 0
        for f in (workspace_folder, folder):
            if f is not None and (f / "vectors.npy").exists() and (f / "ids.json").exists():
                ids = json.loads((f / "ids.json").read_text())
                vecs = np.load(f / "vectors.npy", allow_pickle=False)
                if len(ids) == len(vecs):
                    self.vectors.update(zip(ids, vecs))

    def ensure(self, docs: Sequence[Any], block: int = 128) -> None:
        """Embed the documents not cached yet, saving after every block so an interrupted run resumes."""
        missing = list({d.id: d for d in docs if d.id not in self.vectors}.values())
        logger.info("embeddings: %d of %d documents to embed", len(missing), len(docs))
        for start in range(0, len(missing), block):
            part = missing[start : start + block]
            for d, v in zip(part, self.embedder.embed([d.text for d in part])):  # (B, D)
                self.vectors[d.id] = v
            self.embedded += len(part)
            self._save()
            logger.info("embeddings: %d / %d", min(start + block, len(missing)), len(missing))

    def __call__(self, ids: Sequence[str]) -> np.ndarray:
        return np.stack([self.vectors[i] for i in ids]).astype(np.float32)  # (N, D)

    def __contains__(self, key: str) -> bool:
        return key in self.vectors

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Keep vectors (N, D) computed elsewhere, one per key, and save them."""
        for k, v in zip(keys, vectors, strict=True):
            self.vectors[k] = np.asarray(v, dtype=np.float32)
        self.embedded += len(keys)
        self._save()

    def texts(self, ids: Sequence[str], texts: Sequence[str], max_windows: int | None = None) -> np.ndarray:
        """Vectors (N, D) of texts by id (of their first ``max_windows`` windows), embedding the ones not cached."""
        missing = list({i: t for i, t in zip(ids, texts) if i not in self.vectors}.items())
        for start in range(0, len(missing), 512):
            part = missing[start : start + 512]
            self.vectors.update(zip([i for i, _ in part], self.embedder.embed([t for _, t in part],
                                                                               max_windows=max_windows)))
            self.embedded += len(part)
            self._save()
        return self(ids)

    def routed_as(self, docs: Sequence[Any], max_windows: int | None) -> np.ndarray:
        """Vectors (N, D) of documents as a router reading their first ``max_windows`` windows embeds them."""
        if max_windows is None:
            return self.texts([d.id for d in docs], [d.text for d in docs])
        # a document no longer than max_windows windows embeds as it does whole
        ids = [d.id if len(self.embedder.chunks(d.text, max_windows + 1)) <= max_windows else f"{d.id}@first{max_windows}"
               for d in docs]
        return self.texts(ids, [d.text for d in docs], max_windows)

    def _save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        ids = list(self.vectors)
        tmp = self.folder / f".tmp-{os.getpid()}.npy"
        np.save(tmp, np.stack([self.vectors[i] for i in ids]))
        tmp.replace(self.folder / "vectors.npy")
        (self.folder / "ids.json").write_text(json.dumps(ids))


# ---------------------------------------------------------------------- one fold
@dataclass(frozen=True)
class Fold:
    """What one router learns from and is scored on (labels index ``experts``)."""

    train: list[Any]  # Documents
    train_y: np.ndarray  # (N,)
    val: list[Any]
    val_y: np.ndarray  # (V,)


def build_fold(corpora: dict[str, dict[str, list[Any]]], experts: list[str], recipe: Any, exclude: str | None) -> Fold:
    """The recipe's per-domain train and val sample (as train_doc does), without the documents of source ``exclude``."""
    from moe_experts.data.split import unit_hash

    parts: dict[str, tuple[list[Any], list[int]]] = {"train": ([], []), "val": ([], [])}
    limits = {"train": recipe.max_train_documents_per_domain, "val": recipe.max_val_documents_per_domain}
    for label, domain in enumerate(experts):
        for split, (docs, ys) in parts.items():
            kept = [d for d in corpora[domain][split] if d.source != exclude]
            picked = sample(kept, limits[split], lambda d: unit_hash(d.text, "router-sample"))
            docs += picked
            ys += [label] * len(picked)
    return Fold(parts["train"][0], np.asarray(parts["train"][1]), parts["val"][0], np.asarray(parts["val"][1]))


def fit_fold(fold: Fold, cache: VectorCache, *, experts: list[str], fallback: str, recipe: Any, embedder: Any,
             examples: list[tuple[str, str, bool]], prototype_texts: list[tuple[str, str]] = ()) -> Any:
    """The project's document router fitted on a fold (``fit_router`` + ``DocRouter.from_fit``)."""
    from moe_experts.routing.doc_fit import Split, fit_router
    from moe_experts.routing.doc_router import DocRouter

    def split(docs: list[Any], y: np.ndarray) -> Split:
        return Split([d.id for d in docs], [d.text for d in docs], y)

    fitted = fit_router(split(fold.train, fold.train_y), split(fold.val, fold.val_y), experts=experts,
                        domains=experts, fallback=fallback, recipe=recipe, embedder=embedder,
                        embed=lambda s: cache.texts(s.ids, s.texts), examples=examples,
                        prototype_texts=prototype_texts)
    return DocRouter.from_fit(fitted, embedder)


def route(router: Any, x: np.ndarray, docs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 expert index (N,), routed expert index with abstention (N,)) for documents ``docs`` embedded as (N, D).

    The routed decision is ``DocRouter.decisions``: what ``route`` returns live, the "no domain" gate included
    (a hybrid router's lexical scorer reads the documents' texts)."""
    decisions = router.decisions(x, [d.text for d in docs])
    top1 = np.asarray([router.experts.index(d.predicted) for d in decisions])
    routed = np.asarray([router.experts.index(d.expert) for d in decisions])
    return top1, routed


def tfidf_predict(train: list[Any], train_y: np.ndarray, tests: Sequence[list[Any]]) -> list[np.ndarray]:
    """The routing_accuracy.py baseline (tf-idf word 1-2 grams + logistic regression), fitted once, on each test set."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=200_000)
    model = LogisticRegression(C=10.0, max_iter=2000).fit(vec.fit_transform([d.text for d in train]), train_y)
    return [model.predict(vec.transform([d.text for d in t])) if t else np.zeros(0, dtype=np.int64) for t in tests]


score = share  # accuracy, count and Wilson 95% interval of a boolean array (the library's, as eval reports it)


def code_version() -> dict[str, Any]:
    """The commit of the code measured, and whether the library or recipes differ from it."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "moe_experts", "router_training"],
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None}
    return {"commit": commit, "uncommitted": [line[3:] for line in dirty if line.strip()]}


# ---------------------------------------------------------------------- loading
@dataclass
class Bench:
    """Everything a source-held-out run needs, loaded once: the workspace's corpora, cards, folds and embeddings."""

    ws: Any
    recipe: Any
    cards: list[Any]
    experts: list[str]
    fallback: str
    examples: list[tuple[str, str, bool]]
    corpora: dict[str, dict[str, list[Any]]]
    sources: dict[str, Counter[str]]
    plan: list[tuple[str, str]]
    embedder: Any
    cache: VectorCache
    test_docs: list[Any]
    test_y: np.ndarray  # (T,)
    folds: dict[str | None, Fold]  # None: every source
    held: dict[str, list[Any]]  # source -> its scored documents
    embed_seconds: float

    @property
    def prototype_texts(self) -> list[tuple[str, str]]:
        """(expert, text): the cards' positive examples and descriptions, as train-router gives the router."""
        from moe_experts.routing.train_doc import card_prototype_texts

        return card_prototype_texts(self.cards)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("-w", "--workspace", default="runs/tiny")
    ap.add_argument("--recipe", type=Path, default=Path("router_training/doc.yaml"))
    ap.add_argument("--cards", nargs="+", type=Path, default=[Path("experts"), Path("experts/extra")],
                    help="folders holding the workspace's expert cards (<domain>.yaml)")
    ap.add_argument("--per-source", type=int, default=300, help="held-out documents per source (val+test, by id hash)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/sho/embeddings"), help="where new embeddings are kept")
    ap.add_argument("--out", type=Path, default=None)


def prepare(args: argparse.Namespace) -> Bench:
    """Load the workspace, build every fold and the scored documents, and embed what the caches lack."""
    from moe_experts.config import load_card
    from moe_experts.data.build import iter_documents
    from moe_experts.data.split import unit_hash
    from moe_experts.recipes import load_recipe
    from moe_experts.routing.embedder import Embedder
    from moe_experts.workspace import Workspace, read_json

    ws = Workspace(Path(args.workspace).absolute())
    recipe = load_recipe(args.recipe)
    domains = sorted(read_json(ws.root / "corpora" / "moe_experts.json")["domains"])
    cards = []
    for domain in domains:
        path = next((f / f"{domain}.yaml" for f in args.cards if (f / f"{domain}.yaml").exists()), None)
        if path is None:
            raise SystemExit(f"no card {domain}.yaml in {[str(f) for f in args.cards]}; give its folder with --cards")
        cards.append(load_card(path))
    experts = [c.name for c in cards]
    if [c.domain for c in cards] != domains or experts != domains:
        raise SystemExit(f"cards {experts} do not name the workspace's domains {domains} one to one")
    fallback = next(c.name for c in cards if c.fallback)
    examples = [(c.name, t, pos) for c in cards for pos, ts in ((True, c.examples.positive), (False, c.examples.negative))
                for t in ts]

    corpora = {d: {s: list(iter_documents(ws, d, s)) for s in SPLITS} for d in domains}  # type: ignore[arg-type]
    sources = {d: Counter(doc.source for s in SPLITS for doc in corpora[d][s]) for d in domains}
    plan = held_out_sources(sources)
    logger.info("held-out sources: %s", plan)

    embedder = Embedder(recipe.embedder, batch_size=recipe.embed_batch_size)
    cache = VectorCache(embedder, ws.embeddings_dir(embedder.info.sha256), args.cache / embedder.info.sha256[:16])

    # the in-distribution test sample of routing_accuracy.py, and every fold's training and scored documents
    test = [(label, doc) for label, d in enumerate(domains)
            for doc in sample(corpora[d]["test"], TEST_PER_DOMAIN, lambda x: unit_hash(x.text, "bench-test"))]
    folds = {None: build_fold(corpora, experts, recipe, None)}
    held: dict[str, list[Any]] = {}
    for domain, source in plan:
        folds[source] = build_fold(corpora, experts, recipe, source)
        docs = [x for s in ("val", "test") for x in corpora[domain][s] if x.source == source]
        held[source] = sample(docs, args.per_source, lambda x: unit_hash(x.id, "source-held-out"))
    t0 = time.monotonic()
    cache.ensure([x for f in folds.values() for x in f.train + f.val] + [x for _, x in test]
                 + [x for docs in held.values() for x in docs])
    embed_s = time.monotonic() - t0

    return Bench(ws, recipe, cards, experts, fallback, examples, corpora, sources, plan, embedder, cache,
                 [x for _, x in test], np.asarray([y for y, _ in test]), folds, held, embed_s)


# ---------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.monotonic()

    b = prepare(args)
    ws, recipe, experts, fallback, examples = b.ws, b.recipe, b.experts, b.fallback, b.examples
    corpora, sources, plan, embedder, cache = b.corpora, b.sources, b.plan, b.embedder, b.cache
    folds, held, test_docs, test_y, embed_s = b.folds, b.held, b.test_docs, b.test_y, b.embed_seconds

    def fit(fold: Fold) -> Any:
        return fit_fold(fold, cache, experts=experts, fallback=fallback, recipe=recipe, embedder=embedder,
                        examples=examples, prototype_texts=b.prototype_texts)

    logger.info("fitting the router on every source")
    full = folds[None]
    router = fit(full)
    top1, routed = route(router, cache.routed_as(test_docs, router.max_windows), test_docs)
    (base,) = tfidf_predict(full.train, full.train_y, [test_docs])
    in_distribution = {
        "train_documents": len(full.train), "val_documents": len(full.val), "test_documents": len(test_docs),
        "router_method": router.method, "router_thresholds": router.manifest["thresholds"],
        "router_windows": router.manifest["windows"],
        "router_routed": score(routed == test_y), "router_top1": score(top1 == test_y),
        "tfidf_logreg": score(base == test_y),
    }

    rows, router_correct, router_top1_correct, base_correct = [], [], [], []
    for domain, source in plan:
        fold, docs = folds[source], held[source]
        label = experts.index(domain)
        held_ids = {x.id for x in docs}
        logger.info("fitting without %s/%s (%d train, %d val documents); scoring %d", domain, source,
                    len(fold.train), len(fold.val), len(docs))
        r = fit(fold)
        top1, routed = route(r, cache.routed_as(docs, r.max_windows), docs)
        # the same router on the in-distribution test sample, less S's documents
        keep = np.asarray([x.source != source for x in test_docs])
        kept = [x for x, k in zip(test_docs, keep) if k]
        id_top1, id_routed = route(r, cache.routed_as(kept, r.max_windows), kept)
        base, base_id = tfidf_predict(fold.train, fold.train_y, [docs, [x for x, k in zip(test_docs, keep) if k]])
        router_correct.append(routed == label)
        router_top1_correct.append(top1 == label)
        base_correct.append(base == label)
        rows.append({
            "source": source, "domain": domain, "documents": len(docs),
            "documents_by_split": dict(Counter(s for s in ("val", "test") for x in corpora[domain][s]
                                               if x.id in held_ids)),
            "train_documents": len(fold.train), "val_documents": len(fold.val),
            "train_documents_of_domain": int((fold.train_y == label).sum()),
            "router_method": r.method, "router_windows": r.max_windows,
            "router_routed": score(routed == label), "router_top1": score(top1 == label),
            "abstain_rate": round(float(np.mean(routed != top1)), 5),
            "routed_to": dict(Counter(experts[i] for i in routed)),
            "tfidf_logreg": score(base == label),
            "tfidf_predicted": dict(Counter(experts[i] for i in base)),
            "in_distribution_test_without_source": {
                "documents": int(keep.sum()),
                "router_routed": score(id_routed == test_y[keep]),
                "tfidf_logreg": score(base_id == test_y[keep]),
            },
        })
        logger.info("%s/%s: router %.3f (top-1 %.3f), tf-idf %.3f", domain, source, rows[-1]["router_routed"]["accuracy"],
                    rows[-1]["router_top1"]["accuracy"], rows[-1]["tfidf_logreg"]["accuracy"])

    def macro(correct: list[np.ndarray]) -> dict[str, Any]:
        lo, hi = bootstrap_macro(correct)
        pooled = np.concatenate(correct)
        return {"accuracy": round(float(np.mean([c.mean() for c in correct])), 5),
                "interval_95_bootstrap": [round(lo, 5), round(hi, 5)],
                "micro_accuracy": round(float(pooled.mean()), 5), "micro_documents": len(pooled)}

    summary = {"router_routed": macro(router_correct), "router_top1": macro(router_top1_correct),
               "tfidf_logreg": macro(base_correct)}
    result = {
        "benchmark": "source_held_out",
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": usable_cores(), "python": platform.python_version()},
        "command": " ".join(["python", *sys.argv]),
        "code": code_version(),
        "workspace": str(ws.root),
        "recipe": str(args.recipe),
        "experts": experts,
        "fallback": fallback,
        "per_source": args.per_source,
        "rule": (f"routed decision (abstentions go to the fallback '{fallback}': wrong unless the held-out source "
                 f"is in '{fallback}'); top-1 without abstention beside it"),
        "sources": {d: dict(c) for d, c in sources.items()},
        "target": {
            "macro_source_held_out_at_least": 0.90, "in_distribution_at_least": 0.985,
            "macro_met": summary["router_routed"]["accuracy"] >= 0.90,
            "in_distribution_met": in_distribution["router_routed"]["accuracy"] >= 0.985,
        },
        "macro_over_sources": summary,
        "in_distribution": in_distribution,
        "held_out": rows,
        "seconds": {"embedding": round(embed_s, 1), "total": round(time.monotonic() - started, 1)},
        "new_embeddings": cache.embedded,
    }
    write_result(result, args.out, f"source_held_out-{result['date']}",
                 shown={k: v for k, v in result.items() if k not in ("machine", "held_out")})


if __name__ == "__main__":
    main()
