"""The document-level router: embed a request, search the FAISS index, give a calibrated posterior.

Artifact ``routers/doc/`` (written by ``routing.train_doc``), published as one unit::

    CURRENT                 the name of the live version (replaced atomically)
    v-<stamp>/              one version:
      router.json             manifest: embedder id + weights hash, expert set, corpus hashes, method,
                              calibration, thresholds, validation metrics, versions, and every file's
                              SHA-256 and size
      index.faiss             the embedded training documents
      classifier.safetensors  logistic-regression weights, document labels, centroids,
                              isotonic maps, the lexical scorer's idf and weights, the card prototypes
                              (plain arrays; no pickle)
      lexicon.json            the lexical scorer's word n-grams, in column order (``hybrid`` routers only)
      documents.jsonl         id, domain and opening of every indexed document (for --explain)

A save writes a new version folder, then points CURRENT at it; the previous version stays for readers
that are still loading it. A reader resolves CURRENT once and reads that version's files, each checked
against its hash, so it sees a complete old router or a complete new one, never a mix. (A router saved
before versions existed, with its files directly in the folder, is still read.) The token-level router is
published the same way, with the same helpers (``workspace.publish_version``, ``live_dir``, ``read_live``).

Loading refuses a router built for another expert set, embedder or corpus, and
says what differs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moe_experts.config import ExpertRegistry
from moe_experts.recipes import DocRouterRecipe
from moe_experts.data.split import unit_hash
from moe_experts.errors import CheckpointError, ConfigError, MissingArtifactError, StaleArtifactError
from moe_experts.routing.classifier import Calibrator, LexicalModel, NoDomainGate
from moe_experts.routing.doc_fit import FORMAT_VERSION, FittedRouter, Split, fit_router, raw_log_probs
from moe_experts.routing.embedder import Embedder, resolve_embedder, weights_hash
from moe_experts.routing.index import INDEX_FILE, IndexInfo, VectorIndex
from moe_experts.workspace import (
    Workspace,
    file_records,
    publish_version,
    read_live,
    verify_files,
    write_json_atomic,
)
from moe_experts.workspace import live_dir as _live_dir

logger = logging.getLogger(__name__)

ROUTER_JSON = "router.json"
TENSORS = "classifier.safetensors"
DOCUMENTS = "documents.jsonl"
LEXICON = "lexicon.json"
EXPLAIN_NEIGHBOURS = 5
RETRAIN = "retrain it: `moe-experts train-router --force`"


@dataclass(frozen=True)
class Neighbour:
    doc_id: str
    domain: str
    similarity: float
    snippet: str


@dataclass(frozen=True)
class RoutingDecision:
    """Where one request goes, and why."""

    expert: str  # who answers (the fallback when the router abstains)
    predicted: str  # the classifier's top-1
    posterior: dict[str, float]  # calibrated, every expert, in expert order
    confidence: float  # posterior of ``predicted``
    abstained: bool
    reason: str
    nearest_similarity: float  # cosine similarity to the closest training document
    neighbours: tuple[Neighbour, ...] = ()  # filled when explaining

    def top_k(self, k: int) -> list[tuple[str, float]]:
        """The k most probable experts with their posterior renormalised over those k."""
        ranked = sorted(self.posterior.items(), key=lambda kv: -kv[1])[:k]
        total = sum(p for _, p in ranked) or 1.0
        return [(name, p / total) for name, p in ranked]

    def to_json(self) -> dict[str, Any]:
        return {
            "expert": self.expert,
            "predicted": self.predicted,
            "posterior": {k: round(v, 6) for k, v in self.posterior.items()},
            "confidence": round(self.confidence, 6),
            "abstained": self.abstained,
            "reason": self.reason,
            "nearest_similarity": round(self.nearest_similarity, 6),
            "neighbours": [
                {"id": n.doc_id, "domain": n.domain, "similarity": round(n.similarity, 6), "snippet": n.snippet}
                for n in self.neighbours
            ],
        }


def router_dir(workspace_root: Path) -> Path:
    return Workspace(workspace_root).router_dir("doc")


def live_dir(folder: Path) -> Path:
    """The folder holding the live router's files: the version CURRENT names (or ``folder`` itself, for a router
    saved before versions existed, or none)."""
    return _live_dir(folder, hint=RETRAIN)


def router_manifest(folder: Path) -> dict[str, Any] | None:
    """The live router's router.json (None: no router in ``folder``)."""
    path = live_dir(folder) / ROUTER_JSON
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable or corrupted: {exc}", hint=RETRAIN) from exc


class DocRouter:
    """A trained document router, ready to route (see ``load``)."""

    def __init__(
        self,
        manifest: dict[str, Any],
        index: VectorIndex,
        tensors: dict[str, np.ndarray],
        calibrator: Calibrator,
        folder: Path | None,
        embedder: Embedder | None = None,
        documents: list[dict[str, str]] | None = None,
        lexical: LexicalModel | None = None,
    ) -> None:
        self.manifest = manifest
        self.experts: list[str] = list(manifest["experts"])
        self.fallback: str = manifest["fallback"]
        self.method: str = manifest["classifier"]["method"]
        self.knn_k: int = int(manifest["classifier"]["knn_k"])
        self.min_confidence: float = float(manifest["thresholds"]["min_confidence"])
        self.min_similarity: float = float(manifest["thresholds"]["min_similarity"])
        # The "no domain" gate; a router saved before it existed has none and routes as it did.
        bar = manifest["thresholds"].get("max_no_domain_score")
        self.max_no_domain_score: float | None = None if bar is None else float(bar)
        self.no_domain_gate: NoDomainGate | None = (
            NoDomainGate(tensors["no_domain_coef"], tensors["no_domain_intercept"])
            if bar is not None and "no_domain_coef" in tensors else None)
        # The windows of a request it reads (chosen on validation); None: every window, as routers saved before.
        self.max_windows: int | None = (manifest.get("windows") or {}).get("max")
        self.index = index
        self.tensors = tensors
        self.calibrator = calibrator
        self.folder = folder
        self._embedder = embedder
        self._documents = documents  # id, domain, snippet of every indexed document; read from folder on demand
        self.lexical = lexical  # the hybrid method's word scorer
        if self.method == "hybrid" and lexical is None:
            raise ValueError("a hybrid router needs its lexical model")
        # The hybrid method's card prototypes (weight, scale); a router saved before them has none.
        self.prototypes: dict[str, Any] | None = manifest["classifier"].get("prototypes")
        if self.prototypes is not None:
            shape = getattr(tensors.get("prototypes"), "shape", None)
            if shape is None or shape[0] != len(self.experts) or shape[1] != index.info.dim:
                raise ValueError(f"the router's manifest names card prototypes but its weights hold "
                                 f"{'none' if shape is None else f'shape {tuple(shape)}'}, not "
                                 f"({len(self.experts)}, {index.info.dim})")

    # ------------------------------------------------------------------ scoring
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.manifest["embedder"]["spec"])
        return self._embedder

    def warm_up(self) -> None:
        """Load the embedder and run it once, so the first request pays no one-off start-up cost."""
        self.embedder.embed(["warm-up"])

    @property
    def reads_text(self) -> bool:
        """Whether scoring needs the requests' texts as well as their vectors (the hybrid method)."""
        return self.lexical is not None

    def read_texts(self, texts: Sequence[str] | None) -> list[str] | None:
        """What the lexical scorer reads of each request: the text of the windows the embedder reads."""
        if not self.reads_text:
            return None
        if texts is None:
            raise ValueError(f"this router's '{self.method}' scorer reads the requests' texts as well as their "
                             "vectors: pass texts=")
        return [self.embedder.read_text(t, self.max_windows) for t in texts]

    def raw_log_probs(self, vectors: np.ndarray, sims: np.ndarray, ids: np.ndarray,
                      read: Sequence[str] | None = None) -> np.ndarray:
        """Uncalibrated log-posterior (N, C) of unit vectors (N, D) with their neighbours (N, k) and, for the
        lexical scorer, what it reads of each request (``read_texts``)."""
        return raw_log_probs(self.method, self.tensors, vectors, sims, ids, len(self.experts), lexical=self.lexical,
                             texts=read, prototypes=self.prototypes)

    def posteriors(self, vectors: np.ndarray, texts: Sequence[str] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(calibrated posterior (N, C), neighbour similarities (N, k), neighbour ids (N, k)) of requests
        embedded as ``vectors`` (N, D); ``texts`` (the requests) are needed when ``reads_text``."""
        read = self.read_texts(texts)
        sims, ids = self.index.search(vectors, max(self.knn_k, EXPLAIN_NEIGHBOURS))
        raw = self.raw_log_probs(vectors, sims[:, : self.knn_k], ids[:, : self.knn_k], read)
        return self.calibrator(raw), sims, ids

    def no_domain_scores(self, vectors: np.ndarray) -> np.ndarray | None:
        """P(no domain) of unit vectors (N, D) -> (N,); None for a router without the gate."""
        return None if self.no_domain_gate is None else self.no_domain_gate.scores(vectors)

    def decide(
        self, probs: np.ndarray, nearest: float, no_domain: float | None = None
    ) -> tuple[str, str, bool, str]:
        """(expert, predicted, abstained, reason) for one calibrated posterior (C,) and its "no domain" score."""
        top = int(np.argmax(probs))
        predicted, conf = self.experts[top], float(probs[top])
        if no_domain is not None and self.max_no_domain_score is not None and no_domain >= self.max_no_domain_score:
            return self.fallback, predicted, True, (
                f"looks like no domain: out-of-domain score {no_domain:.3f} >= {self.max_no_domain_score:.3f}; "
                f"sent to the fallback expert '{self.fallback}'"
            )
        if nearest < self.min_similarity:
            return self.fallback, predicted, True, (
                f"far from every training document: nearest similarity {nearest:.3f} < {self.min_similarity:.3f}; "
                f"sent to the fallback expert '{self.fallback}'"
            )
        if conf < self.min_confidence:
            return self.fallback, predicted, True, (
                f"low confidence: top posterior {conf:.3f} ({predicted}) < {self.min_confidence:.3f}; "
                f"sent to the fallback expert '{self.fallback}'"
            )
        bar = (f">= abstain threshold {self.min_confidence:.3f}" if self.min_confidence > 0
               else "(no confidence threshold: abstaining never helped on validation)")
        gate = (f"; out-of-domain score {no_domain:.3f} < {self.max_no_domain_score:.3f}"
                if no_domain is not None and self.max_no_domain_score is not None else "")
        return predicted, predicted, False, (
            f"top posterior {conf:.3f} {bar}; nearest training document {nearest:.3f} >= {self.min_similarity:.3f}"
            f"{gate}"
        )

    def route(self, texts: list[str], *, explain: bool = False) -> tuple[list[RoutingDecision], float]:
        """Decisions for many requests, and the seconds spent (embedding + search + classifier)."""
        embedder = self.embedder  # loading the model is not part of routing latency
        started = time.perf_counter()
        vectors = embedder.embed(texts, max_windows=self.max_windows)  # (N, D)
        decisions = self.decisions(vectors, texts, explain=explain)
        return decisions, time.perf_counter() - started

    def decisions(self, vectors: np.ndarray, texts: Sequence[str] | None = None, *,
                  explain: bool = False) -> list[RoutingDecision]:
        """Decisions for already embedded requests (N, D): the evaluator reuses cached embeddings.
        ``texts`` are the requests themselves, needed when the router ``reads_text``."""
        probs, sims, ids = self.posteriors(vectors, texts)
        none = self.no_domain_scores(vectors)  # (N,) or None
        decisions = []
        for i in range(len(vectors)):
            nearest = float(sims[i, 0]) if ids[i, 0] >= 0 else -1.0
            expert, predicted, abstained, reason = self.decide(
                probs[i], nearest, None if none is None else float(none[i]))
            decisions.append(
                RoutingDecision(
                    expert=expert,
                    predicted=predicted,
                    posterior={e: float(p) for e, p in zip(self.experts, probs[i])},
                    confidence=float(probs[i].max()),
                    abstained=abstained,
                    reason=reason,
                    nearest_similarity=nearest,
                    neighbours=self._neighbours(sims[i], ids[i]) if explain else (),
                )
            )
        return decisions

    def _neighbours(self, sims: np.ndarray, ids: np.ndarray) -> tuple[Neighbour, ...]:
        if self._documents is None:
            assert self.folder is not None  # a router fitted in memory carries its documents
            with (self.folder / DOCUMENTS).open(encoding="utf-8") as f:
                self._documents = [json.loads(line) for line in f]
        return tuple(
            Neighbour(
                doc_id=self._documents[j]["id"],
                domain=self._documents[j]["domain"],
                similarity=float(s),
                snippet=self._documents[j]["snippet"],
            )
            for s, j in zip(sims[:EXPLAIN_NEIGHBOURS], ids[:EXPLAIN_NEIGHBOURS])
            if j >= 0
        )

    # ------------------------------------------------------------------ fitting and saving
    @classmethod
    def fit(
        cls, texts: Sequence[str], labels: Sequence[str], *, fallback: str, val_texts: Sequence[str] | None = None,
        val_labels: Sequence[str] | None = None, recipe: DocRouterRecipe | None = None, val_fraction: float = 0.2,
        prototypes: Mapping[str, Sequence[str]] | None = None,
    ) -> DocRouter:
        """Fit a router in memory from texts labelled with expert names (no workspace), as scikit-learn fits.

        ``fallback`` is the expert that gets what the router abstains on. Without ``val_texts`` a
        ``val_fraction`` of every expert's texts (chosen by content hash) calibrates the posterior
        and tunes the abstain thresholds. ``prototypes`` (expert -> texts that say what it is for, as a card's
        examples and description) give the ``hybrid`` scorer its card-prototype share. ``save`` writes it;
        ``load`` reads it back.
        """
        recipe = recipe or DocRouterRecipe()
        if len(texts) != len(labels):
            raise ConfigError(f"fit: {len(texts)} texts but {len(labels)} labels", hint="give one label per text")
        if (val_texts is None) != (val_labels is None):
            raise ConfigError("fit: give both val_texts and val_labels, or neither")
        experts = sorted(set(labels))
        if fallback not in experts:
            raise ConfigError(f"fit: the fallback '{fallback}' is none of the labels {experts}",
                              hint="name one of the experts as fallback")
        if len(experts) < 2:
            raise ConfigError(f"fit: a router needs at least two experts, the labels name {experts}")
        if val_texts is None:
            held = [unit_hash(t, "router-fit-val") < val_fraction for t in texts]
            val_texts, val_labels = [t for t, h in zip(texts, held) if h], [y for y, h in zip(labels, held) if h]
            texts, labels = [t for t, h in zip(texts, held) if not h], [y for y, h in zip(labels, held) if not h]
        assert val_labels is not None
        for name, split in (("training", labels), ("validation", val_labels)):
            missing = [e for e in experts if e not in set(split)]
            if missing:
                raise ConfigError(f"fit: no {name} text for expert(s) {', '.join(missing)}",
                                  hint="give every expert texts (at least 1 / val_fraction of them without val_texts)")
        index = {e: i for i, e in enumerate(experts)}

        def split(prefix: str, xs: Sequence[str], ys: Sequence[str]) -> Split:
            return Split([f"{prefix}-{i}" for i in range(len(xs))], list(xs), np.asarray([index[y] for y in ys]))

        embedder = Embedder(recipe.embedder, batch_size=recipe.embed_batch_size, precision="auto")  # bulk
        fitted = fit_router(split("train", texts, labels), split("val", val_texts, val_labels), experts=experts,
                            domains=experts, fallback=fallback, recipe=recipe, embedder=embedder,
                            prototype_texts=[(e, t) for e, ts in (prototypes or {}).items() for t in ts])
        return cls.from_fit(fitted, embedder)

    @classmethod
    def from_fit(cls, fitted: FittedRouter, embedder: Embedder | None = None) -> DocRouter:
        """The router of a fit, in memory (``save`` writes it); it embeds requests in fp32, as a loaded one does."""
        if embedder is not None:
            embedder.precision = "fp32"  # the fit may have embedded its documents in bf16
        return cls(fitted.manifest, fitted.index, fitted.tensors, fitted.calibrator, None, embedder=embedder,
                   documents=fitted.documents, lexical=fitted.lexical)

    def check_examples(self, examples: list[tuple[str, str, bool]], vectors: np.ndarray) -> dict[str, Any]:
        """Route the cards' example prompts: positives must reach their expert, negatives must not."""
        wrong = []
        n_pos = n_pos_ok = n_neg = n_neg_ok = 0
        decisions = self.decisions(vectors, [text for _, text, _ in examples])  # the gate included
        for (name, text, positive), decision in zip(examples, decisions):
            expert, reason = decision.expert, decision.reason
            ok = (expert == name) if positive else (expert != name)
            n_pos, n_neg = n_pos + positive, n_neg + (not positive)
            n_pos_ok, n_neg_ok = n_pos_ok + (positive and ok), n_neg_ok + (not positive and ok)
            if not ok:
                kind = "positive" if positive else "negative"
                wrong.append({"card": name, "kind": kind, "text": text[:120], "routed_to": expert, "reason": reason})
                logger.warning("router: %s example of card '%s' routed to '%s': %r (%s)", kind, name, expert, text[:80], reason)
        return {"positive": f"{n_pos_ok}/{n_pos}", "negative": f"{n_neg_ok}/{n_neg}", "misrouted": wrong}

    def save(self, folder: Path) -> None:
        """Publish the router in ``folder``: write a new version folder, then point CURRENT at it (one rename)."""
        from safetensors.numpy import save_file

        if self._documents is None:
            assert self.folder is not None
            with (self.folder / DOCUMENTS).open(encoding="utf-8") as f:
                self._documents = [json.loads(line) for line in f]
        # a router saved before versions had these files in ``folder``: the save removes them
        with publish_version(folder, unversioned=(ROUTER_JSON, TENSORS, DOCUMENTS, INDEX_FILE, LEXICON)) as new:
            tmp = new.tmp
            self.index.save(tmp)
            save_file({k: np.ascontiguousarray(v) for k, v in self.tensors.items()}, str(tmp / TENSORS))
            with (tmp / DOCUMENTS).open("w", encoding="utf-8") as f:
                for doc in self._documents:
                    f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            files = [INDEX_FILE, TENSORS, DOCUMENTS]
            if self.lexical is not None:
                (tmp / LEXICON).write_text(json.dumps({"ngram_max": self.lexical.ngram_max, "terms": self.lexical.terms},
                                                      ensure_ascii=False) + "\n", encoding="utf-8")
                files.append(LEXICON)
            self.manifest["files"] = file_records(tmp, files)
            write_json_atomic(tmp / ROUTER_JSON, self.manifest)
        self.folder = new.path

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, folder: Path, registry: ExpertRegistry | None = None, corpus_hashes: dict[str, Any] | None = None, *,
        check_embedder: bool = True,
    ) -> DocRouter:
        """Load a saved router; refuse one built for another expert set (``registry``), embedder or corpus."""
        # a save may publish a new version and prune this one while we read it: then the new one is read
        return read_live(folder, lambda live: cls._load_version(live, registry, corpus_hashes,
                                                                check_embedder=check_embedder),
                         what="the document router", hint=RETRAIN)

    @classmethod
    def _load_version(
        cls, folder: Path, registry: ExpertRegistry | None, corpus_hashes: dict[str, Any] | None, *,
        check_embedder: bool,
    ) -> DocRouter:
        from safetensors.numpy import load_file

        path = folder / ROUTER_JSON
        if not path.exists():
            raise MissingArtifactError(
                f"no document router in {folder}", hint="run `moe-experts train-router` (or `moe-experts quickstart`)"
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is unreadable or corrupted: {exc}", hint=RETRAIN) from exc
        if "files" in manifest:  # every file this load reads, against the hashes written with it
            verify_files(folder, manifest["files"], what=f"the document router in {folder}", hint=RETRAIN)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StaleArtifactError(
                f"{path} has format version {manifest.get('format_version')}, this moe-experts reads {FORMAT_VERSION}",
                hint="retrain it: `moe-experts train-router --force`",
            )
        check_compatible(manifest, registry, corpus_hashes, check_embedder=check_embedder)
        try:
            tensors = load_file(str(folder / TENSORS))
        except Exception as exc:  # safetensors raises its own error types for truncated files
            raise CheckpointError(
                f"router weights {folder / TENSORS} are missing or corrupted: {exc}",
                hint="retrain it: `moe-experts train-router --force`",
            ) from exc
        info = IndexInfo.from_json(manifest["index"])
        index = VectorIndex.load(folder, info)
        cal = manifest["classifier"]["calibration"]
        n = len(manifest["experts"])
        calibrator = Calibrator(
            kind=cal["kind"],
            temperature=float(cal.get("temperature", 1.0)),
            iso_x=tuple(tensors[f"iso_x_{c}"] for c in range(n)) if cal["kind"] == "isotonic" else (),
            iso_y=tuple(tensors[f"iso_y_{c}"] for c in range(n)) if cal["kind"] == "isotonic" else (),
        )
        lexical = None
        if manifest["classifier"]["method"] == "hybrid":
            try:
                lexicon = json.loads((folder / LEXICON).read_text(encoding="utf-8"))
                lexical = LexicalModel.from_tensors(lexicon["terms"], tensors, lexicon["ngram_max"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"the lexical scorer of the router in {folder} ({LEXICON} and its weights) is "
                                      f"missing or corrupted: {exc}", hint=RETRAIN) from exc
        try:
            return cls(manifest, index, tensors, calibrator, folder, lexical=lexical)
        except ValueError as exc:  # weights that do not match the manifest
            raise CheckpointError(f"the router in {folder} is inconsistent: {exc}", hint=RETRAIN) from exc


def check_compatible(
    manifest: dict[str, Any], registry: ExpertRegistry | None, corpus_hashes: dict[str, Any] | None, *,
    check_embedder: bool,
) -> None:
    diffs = []
    if registry is not None and list(manifest["experts"]) != registry.names:
        diffs.append(f"experts: router was built for {manifest['experts']}, the cards now declare {registry.names}")
    if registry is not None and manifest.get("fallback") != registry.fallback.name:
        diffs.append(f"fallback: router uses '{manifest.get('fallback')}', the cards now name '{registry.fallback.name}'")
    if corpus_hashes is not None and manifest.get("corpus_hashes") != corpus_hashes:
        changed = sorted(
            d for d in set(corpus_hashes) | set(manifest.get("corpus_hashes", {}))
            if corpus_hashes.get(d) != manifest.get("corpus_hashes", {}).get(d)
        )
        diffs.append(f"corpora: the training documents of {changed} changed since the router was built")
    if check_embedder:
        emb = manifest["embedder"]
        try:
            _, path = resolve_embedder(emb["spec"])
            current = weights_hash(path)
        except Exception as exc:  # noqa: BLE001 - any failure here is reported as a difference
            current = f"unavailable ({exc})"
        if current != emb["sha256"]:
            diffs.append(
                f"embedder: router was built with {emb['id']} (weights sha256 {emb['sha256'][:12]}), "
                f"installed now: {current[:40]}"
            )
    if diffs:
        raise StaleArtifactError(
            "the document router does not match this workspace:\n  " + "\n  ".join(diffs),
            hint="retrain it: `moe-experts train-router --force`",
        )
