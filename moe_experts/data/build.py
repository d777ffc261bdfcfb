"""Build the per-domain corpora: read sources, clean, deduplicate, cap, split, write.

All domains are built together because duplicates are removed across domains
(a text in two domains would be label noise for the router and a leak between
one domain's train split and another's test split). The whole ``corpora/``
folder is written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moe_experts.config import DataConfig, ExpertCard, ExpertRegistry, hash_json
from moe_experts.data.clean import clean
from moe_experts.data.dedup import deduplicate
from moe_experts.sources import build_source
from moe_experts.data.split import SPLITS, Split, assign_split, doc_id, unit_hash
from moe_experts.errors import DataError, MissingArtifactError, SourceUnavailableError
from moe_experts.progress import Progress
from moe_experts.workspace import MANIFEST, Workspace, atomic_dir, read_json, sha256_file, versions, write_json_atomic

logger = logging.getLogger(__name__)

# Bumped when cleaning, chunking, dedup or splitting changes what a build produces.
PIPELINE_VERSION = 1


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    source: str
    ref: str

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "text": self.text, "source": self.source, "ref": self.ref}, ensure_ascii=False)


@dataclass
class _SourceReport:
    fingerprint: dict[str, Any]
    available: bool = True
    error: str | None = None
    raw_documents: int = 0
    chunks: int = 0


@dataclass
class _DomainDraft:
    card: ExpertCard
    texts: list[tuple[str, str, str]] = field(default_factory=list)  # (text, source kind, ref)
    sources: list[_SourceReport] = field(default_factory=list)
    sampled_from: int | None = None  # document count before max_documents, when it applied


def _sample(draft: _DomainDraft) -> None:
    """Apply the card's max_documents before dedup, by salted content hash: unbiased and deterministic.

    Sampling first keeps dedup's cost proportional to what is kept; a domain may
    end slightly under the cap when some sampled documents are duplicates.
    """
    cap = draft.card.corpus.max_documents
    if cap is None or len(draft.texts) <= cap:
        return
    draft.sampled_from = len(draft.texts)
    order = sorted(range(len(draft.texts)), key=lambda i: unit_hash(draft.texts[i][0], "sample"))
    draft.texts = [draft.texts[i] for i in sorted(order[:cap])]
    logger.info("%s: sampled %d of %d documents (max_documents)", draft.card.domain, cap, draft.sampled_from)


def corpora_fingerprint(registry: ExpertRegistry, data_cfg: DataConfig) -> str:
    """What the corpora depend on: the cards, the data settings, the pipeline version."""
    return hash_json(
        {
            "cards": [c.model_dump(mode="json", include={"domain", "corpus"}) for c in registry.cards],
            "data": data_cfg.model_dump(mode="json", exclude={"tokenizer_train_chars_per_domain"}),
            "pipeline": PIPELINE_VERSION,
        }
    )


def corpora_dir(ws: Workspace) -> Path:
    return ws.corpora_dir


def corpora_status(ws: Workspace, registry: ExpertRegistry, data_cfg: DataConfig) -> str:
    """'missing', 'current', or 'stale' (built from other cards or settings)."""
    path = corpora_dir(ws) / MANIFEST
    if not path.exists():
        return "missing"
    built = read_json(path).get("fingerprint")
    return "current" if built == corpora_fingerprint(registry, data_cfg) else "stale"


def build_corpora(
    ws: Workspace, registry: ExpertRegistry, data_cfg: DataConfig, *, strict: bool = False
) -> dict[str, Any]:
    """Build every domain's corpus; returns the top-level manifest."""
    started = time.monotonic()
    drafts = [_read_domain(card, strict=strict) for card in registry.cards]
    for draft in drafts:
        _sample(draft)

    pool: list[tuple[int, str, str, str]] = [  # (domain index, text, source, ref)
        (d, text, src, ref) for d, draft in enumerate(drafts) for text, src, ref in draft.texts
    ]
    logger.info("deduplicating %d documents across %d domains", len(pool), len(drafts))
    with Progress("near-duplicate search", total=len(pool), unit="doc") as bar:
        result = deduplicate([p[1] for p in pool], threshold=data_cfg.near_duplicate_threshold, progress=bar.update)
    dropped = {**result.exact_of, **result.near_of}

    problems: list[str] = []
    domain_docs: list[dict[Split, list[Document]]] = []
    domain_stats: list[dict[str, int]] = []
    kept_by_domain: list[list[int]] = [[] for _ in drafts]
    for i in result.keep:
        kept_by_domain[pool[i][0]].append(i)
    for d, draft in enumerate(drafts):
        stats = {"exact_duplicates": 0, "near_duplicates": 0, "cross_domain_duplicates": 0}
        for i, j in dropped.items():
            if pool[i][0] != d:
                continue
            stats["exact_duplicates" if i in result.exact_of else "near_duplicates"] += 1
            stats["cross_domain_duplicates"] += pool[j][0] != d
        kept = kept_by_domain[d]
        stats["sampled_from"] = draft.sampled_from
        splits: dict[Split, list[Document]] = {s: [] for s in SPLITS}
        for i in kept:
            _, text, src, ref = pool[i]
            split = assign_split(text, data_cfg.val_fraction, data_cfg.test_fraction)
            splits[split].append(Document(id=doc_id(text), text=text, source=src, ref=ref))
        problems.extend(_size_problems(draft, splits))
        domain_docs.append(splits)
        domain_stats.append(stats)
    if problems:
        raise DataError(
            "corpus build failed:\n  " + "\n  ".join(problems),
            hint="install the missing sources named above, add sources to the card, or lower its corpus.min_*",
        )

    fingerprint = corpora_fingerprint(registry, data_cfg)
    with atomic_dir(corpora_dir(ws)) as tmp:
        split_hashes: dict[str, dict[str, str]] = {}
        for draft, splits, stats in zip(drafts, domain_docs, domain_stats, strict=True):
            domain = draft.card.domain
            split_hashes[domain] = _write_domain(tmp / domain, draft, splits, stats, fingerprint)
        top = {
            "fingerprint": fingerprint,
            "pipeline_version": PIPELINE_VERSION,
            "cards_dir": registry.source_dir,
            "data": data_cfg.model_dump(mode="json"),
            "domains": split_hashes,
            "corpus_hash": hash_json(split_hashes),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.monotonic() - started, 1),
            "versions": versions(),
        }
        write_json_atomic(tmp / MANIFEST, top)
    return top


def _read_domain(card: ExpertCard, *, strict: bool) -> _DomainDraft:
    draft = _DomainDraft(card=card)
    spec = card.corpus
    for params in spec.sources:
        source = build_source(params)
        report = _SourceReport(fingerprint=source.fingerprint())
        draft.sources.append(report)
        try:
            source.check()
        except SourceUnavailableError as exc:
            report.available, report.error = False, str(exc)
            if strict:
                raise SourceUnavailableError(f"expert '{card.name}': {exc.message}", hint=exc.hint) from exc
            logger.warning("expert '%s': %s", card.name, exc)
            continue
        with Progress(f"{card.domain}: reading {source.kind}", unit="doc") as bar:
            for raw in source.documents():
                report.raw_documents += 1
                for text in clean(raw.text, min_chars=spec.min_chars_per_doc, max_chars=spec.max_chars_per_doc):
                    draft.texts.append((text, raw.source, raw.ref))
                    report.chunks += 1
                bar.update()
        logger.info(
            "%s: %s gave %d documents (%d after cleaning and chunking)",
            card.domain, source.kind, report.raw_documents, report.chunks,
        )
    return draft


def _size_problems(draft: _DomainDraft, splits: dict[Split, list[Document]]) -> list[str]:
    card, spec = draft.card, draft.card.corpus
    n_docs = sum(len(v) for v in splits.values())
    n_chars = sum(len(doc.text) for v in splits.values() for doc in v)
    problems = []
    if n_docs < spec.min_documents or n_chars < spec.min_characters:
        problems.append(
            f"domain '{card.domain}' has {n_docs} documents / {n_chars} characters, "
            f"under its minimum of {spec.min_documents} / {spec.min_characters} (experts/{card.name}.yaml)"
        )
        problems.extend(f"    because {r.error}" for r in draft.sources if not r.available)
    elif empty := [s for s in SPLITS if not splits[s]]:
        problems.append(f"domain '{card.domain}': the {'/'.join(empty)} split is empty; add documents")
    return problems


def _write_domain(
    folder: Path, draft: _DomainDraft, splits: dict[Split, list[Document]], stats: dict[str, int], fingerprint: str
) -> dict[str, str]:
    folder.mkdir(parents=True)
    hashes: dict[str, str] = {}
    split_stats: dict[str, dict[str, int | str]] = {}
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for doc in splits[split]:
                f.write(doc.to_json() + "\n")
        hashes[split] = sha256_file(path)
        split_stats[split] = {
            "documents": len(splits[split]),
            "characters": sum(len(d.text) for d in splits[split]),
            "bytes": sum(len(d.text.encode()) for d in splits[split]),
            "sha256": hashes[split],
        }
    write_json_atomic(
        folder / "manifest.json",
        {
            "domain": draft.card.domain,
            "expert": draft.card.name,
            "corpora_fingerprint": fingerprint,
            "sources": [vars(r) for r in draft.sources],
            "dedup": stats,
            "splits": split_stats,
            "tokens": None,  # filled in by the tokenizer stage
        },
    )
    return hashes


# --------------------------------------------------------------------------- reading


def require_corpora(ws: Workspace, registry: ExpertRegistry, data_cfg: DataConfig) -> dict[str, Any]:
    """The corpora manifest, refusing missing or stale corpora with the command that fixes it."""
    status = corpora_status(ws, registry, data_cfg)
    if status == "missing":
        raise MissingArtifactError("corpora are not built yet", hint="run `moe-experts data build`")
    if status == "stale":
        raise MissingArtifactError(
            "corpora were built from other cards or data settings than the current ones",
            hint="run `moe-experts data build --force` (models trained on the old corpora must be rebuilt too)",
        )
    manifest = read_json(corpora_dir(ws) / MANIFEST)
    missing = [c.domain for c in registry.cards if c.domain not in manifest["domains"]]
    if missing:
        raise MissingArtifactError(f"corpora lack domains {missing}", hint="run `moe-experts data build --force`")
    return manifest


def iter_documents(ws: Workspace, domain: str, split: Split) -> Iterator[Document]:
    path = corpora_dir(ws) / domain / f"{split}.jsonl"
    if not path.exists():
        raise MissingArtifactError(f"no {split} split for domain '{domain}' ({path})", hint="run `moe-experts data build`")
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            yield Document(id=row["id"], text=row["text"], source=row["source"], ref=row["ref"])


def domain_manifest(ws: Workspace, domain: str) -> dict[str, Any]:
    return read_json(corpora_dir(ws) / domain / "manifest.json")


def update_domain_manifest(ws: Workspace, domain: str, **fields: Any) -> None:
    path = corpora_dir(ws) / domain / "manifest.json"
    write_json_atomic(path, {**read_json(path), **fields})
