"""Build the per-domain corpora: read sources, clean, deduplicate, cap, split, write.

All domains are built together because duplicates are removed across domains
(a text in two domains would be label noise for the router and a leak between
one domain's train split and another's test split). The whole ``corpora/``
folder is written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from moe_experts.config import DataConfig, ExpertCard, ExpertRegistry, hash_json
from moe_experts.data.clean import clean
from moe_experts.data.dedup import deduplicate
from moe_experts.sources import build_source
from moe_experts.data.split import SPLITS, Split, assign_split, doc_id, unit_hash
from moe_experts.errors import DataError, MissingArtifactError, SourceUnavailableError
from moe_experts.progress import Progress
from moe_experts.workspace import (
    MANIFEST,
    Workspace,
    atomic_dir,
    read_json,
    sha256_file,
    verify_files,
    versions,
    write_json_atomic,
)

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
    """What the corpora built together depend on: the cards, the data settings, the pipeline version."""
    return hash_json(
        {
            "cards": [c.model_dump(mode="json", include={"domain", "corpus"}) for c in registry.cards],
            "data": _data_settings(data_cfg),
            "pipeline": PIPELINE_VERSION,
        }
    )


def _data_settings(data_cfg: DataConfig) -> dict[str, Any]:
    return data_cfg.model_dump(mode="json", exclude={"tokenizer_train_chars_per_domain"})


def card_fingerprint(card: ExpertCard, data_cfg: DataConfig) -> str:
    """What one domain's corpus depends on: its card's corpus, the data settings, the pipeline version."""
    return hash_json({"card": card.model_dump(mode="json", include={"domain", "corpus"}),
                      "data": _data_settings(data_cfg), "pipeline": PIPELINE_VERSION})


def corpora_dir(ws: Workspace) -> Path:
    return ws.corpora_dir


@dataclass(frozen=True)
class CorporaState:
    """The corpora against the cards.

    ``missing``: nothing built. ``stale``: the data settings changed, or a built domain's card did
    (``stale_domains``). ``partial``: every built domain is current, and ``new_domains`` (cards with no
    corpus yet) can be added without touching the others. ``current``: every card's domain is built.
    """

    state: Literal["missing", "stale", "partial", "current"]
    new_domains: tuple[str, ...] = ()
    stale_domains: tuple[str, ...] = ()
    base_stale: bool = False  # a domain built with the seed (or the data settings) changed: only a full build helps


def base_domains(manifest: dict[str, Any]) -> list[str]:
    """The domains built together by the last full build: what the tokenizer and the seed learned from."""
    return list(manifest.get("base_domains") or manifest["domains"])


def corpora_state(ws: Workspace, registry: ExpertRegistry, data_cfg: DataConfig) -> CorporaState:
    path = corpora_dir(ws) / MANIFEST
    if not path.exists():
        return CorporaState("missing")
    manifest = read_json(path)
    base = base_domains(manifest)
    cards = manifest.get("cards")
    if cards is None:
        # written before per-domain fingerprints: the base is current when its cards hash as recorded
        base_cards = [c for c in registry.cards if c.domain in base]
        if len(base_cards) == len(base):
            sub = registry.model_copy(update={"cards": tuple(base_cards)})
            ok = manifest.get("fingerprint") == corpora_fingerprint(sub, data_cfg)
        else:
            ok = False
        cards = {d: card_fingerprint(registry.by_domain(d), data_cfg) if ok else None for d in base}
    built = {d for d in manifest["domains"] if d in cards}
    stale = tuple(c.domain for c in registry.cards
                  if c.domain in built and cards[c.domain] != card_fingerprint(c, data_cfg))
    if manifest.get("pipeline_version") != PIPELINE_VERSION or manifest.get("data_fingerprint", _data_fp(data_cfg)) != _data_fp(data_cfg):
        return CorporaState("stale", stale_domains=tuple(registry.domains), base_stale=True)
    new = tuple(d for d in registry.domains if d not in built)
    if stale:
        return CorporaState("stale", new_domains=new, stale_domains=stale, base_stale=any(d in base for d in stale))
    return CorporaState("partial" if new else "current", new_domains=new)


def upgrade_corpora_manifest(ws: Workspace, registry: ExpertRegistry, data_cfg: DataConfig) -> bool:
    """Write per-domain card fingerprints into a manifest from before they were recorded, while its cards still
    check out (before a card is removed, which the old whole-set fingerprint could not tell from an edit)."""
    path = corpora_dir(ws) / MANIFEST
    if not path.exists():
        return False
    manifest = read_json(path)
    if "cards" in manifest or corpora_state(ws, registry, data_cfg).state not in ("current", "partial"):
        return False
    base = base_domains(manifest)
    manifest.update(cards={d: card_fingerprint(registry.by_domain(d), data_cfg) for d in base},
                    base_domains=base, data_fingerprint=_data_fp(data_cfg), added=manifest.get("added") or {})
    write_json_atomic(path, manifest)
    return True


def _data_fp(data_cfg: DataConfig) -> str:
    return hash_json(_data_settings(data_cfg))


def corpora_status(ws: Workspace, registry: ExpertRegistry, data_cfg: DataConfig) -> str:
    """'missing', 'current', 'partial' (cards with no corpus yet), or 'stale' (built from other cards or settings)."""
    return corpora_state(ws, registry, data_cfg).state


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
    domain_stats: list[dict[str, Any]] = []
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
        stats["sampled_from"] = draft.sampled_from
        splits = _split([pool[i][1:] for i in kept_by_domain[d]], data_cfg)
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
            "data_fingerprint": _data_fp(data_cfg),
            "base_domains": registry.domains,
            "cards": {c.domain: card_fingerprint(c, data_cfg) for c in registry.cards},
            "added": {},
            "domains": split_hashes,
            "corpus_hash": hash_json(split_hashes),  # of the base domains: what the tokenizer and seed depend on
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.monotonic() - started, 1),
            "versions": versions(),
        }
        write_json_atomic(tmp / MANIFEST, top)
    return top


def _split(docs: list[tuple[str, str, str]], data_cfg: DataConfig) -> dict[Split, list[Document]]:
    """(text, source, ref) documents into train / val / test by content hash."""
    splits: dict[Split, list[Document]] = {s: [] for s in SPLITS}
    for text, src, ref in docs:
        split = assign_split(text, data_cfg.val_fraction, data_cfg.test_fraction)
        splits[split].append(Document(id=doc_id(text), text=text, source=src, ref=ref))
    return splits


# A new domain whose documents are mostly already in the built corpora repeats an existing domain.
DUPLICATE_DOMAIN_SHARE = 0.5


def add_domains(
    ws: Workspace, registry: ExpertRegistry, data_cfg: DataConfig, domains: list[str], *, strict: bool = False
) -> dict[str, Any]:
    """Build the corpora of ``domains`` (cards new to the workspace) without changing any built domain.

    The new documents are deduplicated against every built corpus, whose documents win: an existing
    document is never dropped and never moves between splits (a split depends only on a document's
    own text). Each new domain folder is written atomically, then the top manifest; an interrupted
    add leaves the corpora as they were. Returns the updated top manifest.
    """
    path = corpora_dir(ws) / MANIFEST
    if not path.exists():
        raise MissingArtifactError("no corpora to add to yet", hint="run `moe-experts data build` (or `moe-experts quickstart`)")
    manifest = read_json(path)
    started = time.monotonic()
    existing = [d for d in manifest["domains"] if d not in domains]
    old_texts: list[str] = []
    owners: list[str] = []
    for d in existing:
        for split in SPLITS:
            for doc in iter_documents(ws, d, split):
                old_texts.append(doc.text)
                owners.append(d)
    drafts = [_read_domain(registry.by_domain(d), strict=strict) for d in domains]
    for draft in drafts:
        _sample(draft)
    new = [(n, text, src, ref) for n, draft in enumerate(drafts) for text, src, ref in draft.texts]
    texts = old_texts + [t for _, t, _, _ in new]
    logger.info("deduplicating %d new documents against the %d of %s", len(new), len(old_texts), ", ".join(existing))
    with Progress("near-duplicate search", total=len(texts), unit="doc") as bar:
        result = deduplicate(texts, threshold=data_cfg.near_duplicate_threshold, progress=bar.update)
    kept = set(result.keep)
    offset = len(old_texts)
    problems: list[str] = []
    built: list[tuple[_DomainDraft, dict[Split, list[Document]], dict[str, Any]]] = []
    for n, draft in enumerate(drafts):
        mine = [offset + i for i, row in enumerate(new) if row[0] == n]
        stats: dict[str, Any] = {"exact_duplicates": 0, "near_duplicates": 0, "cross_domain_duplicates": 0,
                                 "duplicates_of": {}, "sampled_from": draft.sampled_from}
        for i in mine:
            j = result.exact_of.get(i, result.near_of.get(i))
            if j is None:
                continue
            stats["exact_duplicates" if i in result.exact_of else "near_duplicates"] += 1
            owner = owners[j] if j < offset else drafts[new[j - offset][0]].card.domain
            if owner != draft.card.domain:
                stats["cross_domain_duplicates"] += 1
                stats["duplicates_of"][owner] = stats["duplicates_of"].get(owner, 0) + 1
        splits = _split([new[i - offset][1:] for i in mine if i in kept], data_cfg)
        problems.extend(_size_problems(draft, splits))
        if mine and stats["cross_domain_duplicates"] > DUPLICATE_DOMAIN_SHARE * len(mine):
            where = ", ".join(f"{d} ({c:,})" + ("" if d in registry.domains else
                                                 ": no card declares it, a removed expert's corpus kept on disk "
                                                 "(`moe-experts experts remove NAME --delete` deletes it)")
                              for d, c in sorted(stats["duplicates_of"].items(), key=lambda kv: -kv[1]))
            problems.append(
                f"domain '{draft.card.domain}' repeats an existing domain: {stats['cross_domain_duplicates']:,} of its "
                f"{len(mine):,} documents are already in {where}; give its card other sources, or extend that "
                f"domain's card instead of adding an expert")
        built.append((draft, splits, stats))
    if problems:
        raise DataError("adding " + ", ".join(domains) + " failed:\n  " + "\n  ".join(problems),
                        hint="fix the card named above; the built corpora were not changed")
    fingerprint = manifest.get("fingerprint", "")
    hashes = {d: manifest["domains"][d] for d in existing}
    out = {**manifest, "domains": dict(manifest["domains"]), "cards": dict(manifest.get("cards") or {}),
           "added": dict(manifest.get("added") or {}), "base_domains": base_domains(manifest),
           "data_fingerprint": manifest.get("data_fingerprint", _data_fp(data_cfg))}
    if "cards" not in manifest:  # an older manifest: its base was current when we got here (corpora_state)
        out["cards"] = {d: card_fingerprint(registry.by_domain(d), data_cfg) for d in out["base_domains"]
                        if d in registry.domains}
    seconds = round(time.monotonic() - started, 1)
    for draft, splits, stats in built:
        domain = draft.card.domain
        for streams in sorted((ws.root / "tokens").glob(f"*/{domain}")):  # of an earlier corpus of this domain
            shutil.rmtree(streams)
        with atomic_dir(corpora_dir(ws) / domain) as tmp:
            out["domains"][domain] = _write_domain(tmp, draft, splits, stats, fingerprint)
        out["cards"][domain] = card_fingerprint(draft.card, data_cfg)
        out["added"][domain] = {"deduplicated_against": {d: hash_json(h) for d, h in hashes.items()},
                                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds,
                                "documents": {s: len(splits[s]) for s in SPLITS}, "dedup": stats}
        logger.info("%s: %s documents (train / val / test), %d dropped as duplicates of built domains", domain,
                    " / ".join(f"{len(splits[s]):,}" for s in SPLITS), stats["cross_domain_duplicates"])
    write_json_atomic(path, out)
    return out


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
            f"under its minimum of {spec.min_documents} / {spec.min_characters} (card '{card.name}': corpus.min_documents / min_characters)"
        )
        problems.extend(f"    because {r.error}" for r in draft.sources if not r.available)
    elif empty := [s for s in SPLITS if not splits[s]]:
        problems.append(f"domain '{card.domain}': the {'/'.join(empty)} split is empty; add documents")
    return problems


def _write_domain(
    folder: Path, draft: _DomainDraft, splits: dict[Split, list[Document]], stats: dict[str, Any], fingerprint: str
) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
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
    """The corpora manifest, refusing missing, stale or incomplete corpora with the command that fixes it."""
    state = corpora_state(ws, registry, data_cfg)
    if state.state == "missing":
        raise MissingArtifactError("corpora are not built yet", hint="run `moe-experts data build`")
    if state.state == "stale":
        raise MissingArtifactError(
            f"the corpora of {', '.join(state.stale_domains)} were built from other cards or data settings "
            "than the current ones",
            hint="run `moe-experts data build --force` (models trained on the old corpora must be rebuilt too)"
            if state.base_stale else  # domains added after the seed: rebuilt alone
            "run `moe-experts data build` (it rebuilds those domains alone), or `moe-experts quickstart --update`",
        )
    if state.state == "partial":
        folder = registry.source_dir
        raise MissingArtifactError(
            f"no corpus yet for {', '.join(state.new_domains)} (new card: not added to this workspace yet)",
            hint=" or ".join(f"`moe-experts experts add {folder}/{registry.by_domain(d).name}.yaml`"
                             for d in state.new_domains) + " (or `moe-experts quickstart`)",
        )
    return read_json(corpora_dir(ws) / MANIFEST)


def require_base_corpora(ws: Workspace, manifest: dict[str, Any], what: str) -> list[str]:
    """The base domains (what the tokenizer and seed learn from), refusing when one's corpus was deleted."""
    base = base_domains(manifest)
    gone = [d for d in base if not (corpora_dir(ws) / d / "train.jsonl").exists()]
    if gone:
        raise MissingArtifactError(
            f"{what} learns from the domains built together ({', '.join(base)}), and the corpus of "
            f"{', '.join(gone)} was deleted (`moe-experts experts remove --delete`)",
            hint="build everything from the current cards instead: `moe-experts quickstart --rebuild`")
    return base


def iter_documents(ws: Workspace, domain: str, split: Split) -> Iterator[Document]:
    """A split's documents, after checking the file against the hash its domain manifest recorded."""
    path = corpora_dir(ws) / domain / f"{split}.jsonl"
    if not path.exists():
        raise MissingArtifactError(f"no {split} split for domain '{domain}' ({path})", hint="run `moe-experts data build`")
    manifest = path.parent / "manifest.json"
    digest = read_json(manifest).get("splits", {}).get(split, {}).get("sha256") if manifest.exists() else None
    if digest:  # the manifest's "bytes" counts the texts, not the file: only the digest identifies it
        verify_files(path.parent, {path.name: {"sha256": digest, "bytes": path.stat().st_size}},
                     what=f"the {split} split of '{domain}'",
                     hint="rebuild the corpora: `moe-experts data build --force` (models trained on them too)")
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            yield Document(id=row["id"], text=row["text"], source=row["source"], ref=row["ref"])


def domain_manifest(ws: Workspace, domain: str) -> dict[str, Any]:
    return read_json(corpora_dir(ws) / domain / "manifest.json")


def update_domain_manifest(ws: Workspace, domain: str, **fields: Any) -> None:
    path = corpora_dir(ws) / domain / "manifest.json"
    write_json_atomic(path, {**read_json(path), **fields})
