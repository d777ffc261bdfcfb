"""The shared byte-level BPE tokenizer, and the token streams models train on.

One tokenizer for all starter models: the token-level merge (Branch-Train-MiX)
needs every expert to share a vocabulary. It is trained on the train split of
every domain, an equal number of characters from each, so no domain's
statistics dominate the merges. Within a domain the documents are taken in
the order of a hash of their ids, so every source of the domain is in the
sample (a split lists its documents source by source: taking the first ones
would teach the tokenizer only the domain's first source).

Token streams: each split of each domain tokenized once, documents joined with
the end-of-text token, stored as ``.npy`` (uint16/uint32, loaded without
pickle) under ``tokens/<tokenizer hash>/`` so a new tokenizer never reads old
streams.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from moe_experts.config import ExpertRegistry, Preset
from moe_experts.data.build import iter_documents, require_base_corpora, require_corpora, update_domain_manifest
from moe_experts.data.split import SPLITS, Split, unit_hash
from moe_experts.errors import MissingArtifactError
from moe_experts.progress import Progress, bars_enabled
from moe_experts.workspace import (
    MANIFEST,
    Workspace,
    atomic_dir,
    check_inputs,
    file_records,
    read_json,
    read_manifest,
    sha256_file,
    verify_files,
    versions,
    write_manifest,
)

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
PAD = "<|pad|>"
# which train documents the tokenizer learns from; recorded, so a tokenizer trained by another rule is stale
SAMPLE_RULE = "documents in order of unit_hash(id, 'tokenizer-sample') up to the budget"


def tokenizer_inputs(corpora_manifest: dict[str, Any], preset: Preset) -> dict[str, Any]:
    return {
        "corpus_hash": corpora_manifest["corpus_hash"],
        "vocab_size": preset.vocab_size,
        "train_chars_per_domain": preset.data.tokenizer_train_chars_per_domain,
        "sample": SAMPLE_RULE,
    }


def tokenizer_status(ws: Workspace, corpora_manifest: dict[str, Any], preset: Preset) -> str:
    path = ws.tokenizer_dir / MANIFEST
    if not path.exists():
        return "missing"
    recorded = read_json(path)
    current = tokenizer_inputs(corpora_manifest, preset)
    return "current" if all(recorded.get(k) == v for k, v in current.items()) else "stale"


def _training_texts(ws: Workspace, domains: list[str], chars_per_domain: int) -> Iterator[str]:
    """Each domain's train documents in hash order (a sample across its sources) until ``chars_per_domain``."""
    for domain in domains:
        docs = sorted(iter_documents(ws, domain, "train"), key=lambda d: unit_hash(d.id, "tokenizer-sample"))
        budget = chars_per_domain
        for doc in docs:
            if budget <= 0:
                break
            yield doc.text
            budget -= len(doc.text)


def train_tokenizer(ws: Workspace, registry: ExpertRegistry, preset: Preset) -> dict[str, Any]:
    """Train the byte-level BPE and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpora = require_corpora(ws, registry, preset.data)
    started = time.monotonic()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=preset.vocab_size,
        min_frequency=2,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: no unknown tokens, ever
        show_progress=bars_enabled(),
    )
    # the base domains (built together): a domain added later is tokenized with this tokenizer, not trained into it
    base = require_base_corpora(ws, corpora, "the tokenizer")
    texts = list(_training_texts(ws, base, preset.data.tokenizer_train_chars_per_domain))
    logger.info("training a %d-token byte-level BPE on %d documents", preset.vocab_size, len(texts))
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=preset.seq_len,
        clean_up_tokenization_spaces=False,
    )
    with atomic_dir(ws.tokenizer_dir) as tmp:
        fast.save_pretrained(tmp)
        manifest = {
            **tokenizer_inputs(corpora, preset),
            "tokenizer_hash": sha256_file(tmp / "tokenizer.json")[:16],
            "files": file_records(tmp),  # tokenizer.json, tokenizer_config.json, ...: checked at every load
            "actual_vocab_size": len(fast),
            "training_documents": len(texts),
            "training_characters": sum(len(t) for t in texts),
            "seconds": round(time.monotonic() - started, 1),
            "versions": versions(),
        }
        write_manifest(tmp, manifest)
    return manifest


def load_tokenizer(path: Path) -> Any:
    """The workspace's tokenizer; each of its files is checked against the hash recorded when it was trained."""
    from transformers import AutoTokenizer

    manifest = read_json(path / MANIFEST) if (path / MANIFEST).exists() else {}
    if "files" in manifest:
        verify_files(path, manifest["files"], what=f"the tokenizer in {path}",
                     hint="retrain it: `moe-experts data tokenizer --force` (then retrain the models)")
    return AutoTokenizer.from_pretrained(str(path))


def require_tokenizer(ws: Workspace, corpora_manifest: dict[str, Any], preset: Preset) -> dict[str, Any]:
    manifest = read_manifest(ws.tokenizer_dir, what="the tokenizer", build_hint="run `moe-experts data tokenizer`")
    check_inputs(
        "the tokenizer",
        manifest,
        tokenizer_inputs(corpora_manifest, preset),
        rebuild_hint="run `moe-experts data tokenizer --force` (then retrain the models)",
    )
    return manifest


# --------------------------------------------------------------------------- token streams


def stream_path(ws: Workspace, tokenizer_hash: str, domain: str, split: Split) -> Path:
    return ws.tokens_dir(tokenizer_hash, domain) / f"{split}.npy"


def build_token_streams(ws: Workspace, registry: ExpertRegistry, tokenizer_manifest: dict[str, Any]) -> None:
    """Tokenize every split of every domain once (skipping streams already cached)."""
    tok_hash = tokenizer_manifest["tokenizer_hash"]
    tokenizer = None
    for domain in registry.domains:
        folder = ws.tokens_dir(tok_hash, domain)
        if all((folder / f"{s}.npy").exists() for s in SPLITS):
            continue
        tokenizer = tokenizer or load_tokenizer(ws.tokenizer_dir)
        counts: dict[str, int] = {}
        with atomic_dir(folder) as tmp:
            for split in SPLITS:
                stream, n_docs = _tokenize_split(ws, tokenizer, domain, split)
                np.save(tmp / f"{split}.npy", stream, allow_pickle=False)
                counts[split] = int(len(stream) - n_docs)  # tokens, not counting separators
            write_manifest(tmp, {"domain": domain, "tokenizer_hash": tok_hash, "files": file_records(tmp)})
        update_domain_manifest(ws, domain, tokens={"tokenizer_hash": tok_hash, **counts})
        logger.info("%s: %s tokens", domain, ", ".join(f"{s} {n:,}" for s, n in counts.items()))


def _tokenize_split(ws: Workspace, tokenizer: Any, domain: str, split: Split) -> tuple[np.ndarray, int]:
    texts = [doc.text for doc in iter_documents(ws, domain, split)]
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.uint32
    eos = tokenizer.eos_token_id
    parts: list[np.ndarray] = []
    batch = 512
    with Progress(f"{domain}/{split}: tokenizing", total=len(texts), unit="doc") as bar:
        for start in range(0, len(texts), batch):
            ids = tokenizer(texts[start : start + batch], add_special_tokens=False, verbose=False)["input_ids"]
            for seq in ids:
                parts.append(np.asarray(seq + [eos], dtype=dtype))
            bar.update(len(ids))
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return stream, len(texts)


def load_stream(ws: Workspace, tokenizer_hash: str, domain: str, split: Split) -> np.ndarray:
    path = stream_path(ws, tokenizer_hash, domain, split)
    if not path.exists():
        raise MissingArtifactError(f"no token stream for {domain}/{split}", hint="run `moe-experts data tokenizer`")
    record = path.parent / MANIFEST
    if record.exists():  # streams written before they were recorded are read as they are
        verify_files(path.parent, {path.name: read_json(record)["files"][path.name]},
                     what=f"the token stream {domain}/{split}",
                     hint=f"delete {path.parent} and run `moe-experts data tokenizer` to tokenize it again")
    return np.load(path, mmap_mode="r", allow_pickle=False)
