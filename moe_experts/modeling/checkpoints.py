"""Create, save and load causal LMs.

Starter models are transformers ``LlamaForCausalLM`` (so a Mixtral-style merge
is possible later), written with ``save_pretrained`` (safetensors) next to the
tokenizer and a build manifest that records the weights' hash. Loading checks
that hash, so a truncated or edited file is refused with a clear message
instead of a stack trace from deep inside safetensors.

Experts whose card names a Hugging Face id or a local path are loaded with the
same ``AutoModelForCausalLM`` / ``AutoTokenizer`` calls. A hub id loads from the
local Hugging Face cache only (``local_files_only``), unless the run was made
online (``moe_experts.machine.online``): an id that is not cached fails at once
with the way to fetch it, instead of after a minute of network retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_experts.config import ModelShape, ModelSource, Preset
from moe_experts.errors import CheckpointError, ConfigError
from moe_experts.machine import cached_snapshot, download_note, fetch_hint, hub_cache, hub_offline, online
from moe_experts.workspace import (
    MANIFEST,
    atomic_dir,
    file_records,
    read_json,
    sha256_file,
    verify_files,
    versions,
    write_manifest,
)

logger = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"


def llama_config(preset: Preset, tokenizer: Any, shape: ModelShape | None = None) -> Any:
    from transformers import LlamaConfig

    shape = shape or preset.model
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=preset.seq_len,
        rope_theta=shape.rope_theta,
        tie_word_embeddings=shape.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def new_model(preset: Preset, tokenizer: Any, *, seed: int, shape: ModelShape | None = None) -> Any:
    """A freshly initialised starter model (deterministic for a given seed)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(preset, tokenizer, shape))


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(model: Any, tokenizer: Any, target: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write model + tokenizer + manifest into ``target`` atomically; returns the manifest written."""
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = file_records(tmp)  # every file a load reads: weights, config, tokenizer files
        full = {
            **manifest,
            "parameters": count_parameters(model),
            "weights_sha256": {name: rec["sha256"] for name, rec in files.items() if name.endswith(".safetensors")},
            "files": files,
            "versions": versions(),
        }
        write_manifest(tmp, full)
    return full


def weights_id(manifest: dict[str, Any]) -> str:
    """A short id of a saved checkpoint's weights (what a model trained or merged from it records).

    One weight file: the first 16 hex digits of its SHA-256; sharded weights: of the hash of every shard's.
    """
    hashes = manifest["weights_sha256"]
    if len(hashes) == 1:
        return next(iter(hashes.values()))[:16]
    return hashlib.sha256(json.dumps(sorted(hashes.items())).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    manifest: dict[str, Any] | None  # None for models this project did not build


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """The manifest of a starter checkpoint, after checking that every weight file matches its hash."""
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist")
    if not manifest_path.exists():
        raise CheckpointError(
            f"checkpoint {folder} is incomplete: no {MANIFEST}",
            hint="it was not written by a finished build; rebuild it (`force`)",
        )
    manifest = read_json(manifest_path)
    if "files" in manifest:  # every file: weights, config.json, tokenizer.json, ...
        verify_files(folder, manifest["files"], what=f"checkpoint {folder}",
                     hint="rebuild it (`force`); the file was truncated or modified")
        return manifest
    for name, expected in manifest.get("weights_sha256", {}).items():  # written before every file was recorded
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"checkpoint {folder} is missing {name}", hint="rebuild it (`force`)")
        if sha256_file(path) != expected:
            raise CheckpointError(
                f"checkpoint {folder} is corrupted: {name} does not match the hash recorded when it was saved",
                hint="rebuild it (`force`); the file was truncated or modified",
            )
    return manifest


def load_checkpoint(folder: Path, *, device: str = "cpu", dtype: Any = None, verify: bool = True) -> LoadedModel:
    """Load a checkpoint folder this project wrote (hash-checked) or any local transformers folder."""
    manifest = verify_checkpoint(folder) if verify and (folder / MANIFEST).exists() else None
    model, tokenizer = _from_pretrained(str(folder), revision=None, device=device, dtype=dtype, local=True)
    return LoadedModel(model=model, tokenizer=tokenizer, manifest=manifest)


def load_pretrained(
    source: ModelSource, *, device: str = "cpu", dtype: Any = None, card: str | None = None
) -> LoadedModel:
    """Load a card's ``pretrained`` model: a local folder, else a Hugging Face id from the local cache.

    The hub is asked only when the run is online (``MOE_EXPERTS_ONLINE=1``, ``moe-experts --online``);
    ``card``: the card's name, for the message when the model is missing.
    """
    assert source.name_or_path is not None
    path = Path(source.name_or_path).expanduser()
    if path.exists():
        return load_checkpoint(path, device=device, dtype=dtype)
    if not online():
        missing = missing_pretrained(source, card=card)
        if missing is not None:
            raise missing  # before importing transformers: a second, not a minute of retries
    model, tokenizer = _from_pretrained(
        source.name_or_path, revision=source.revision, device=device, dtype=dtype, card=card
    )
    return LoadedModel(model=model, tokenizer=tokenizer, manifest=None)


def missing_pretrained(source: ModelSource, *, card: str | None = None) -> CheckpointError | None:
    """Why ``source`` cannot load without the network, or None: it is a local folder or in the local hub cache.

    Looks at folders only. ``cards validate`` reports what this returns; loading offline raises it.
    """
    if source.kind != "pretrained" or source.name_or_path is None:
        return None
    name = source.name_or_path
    if Path(name).expanduser().exists():
        return None
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:  # a path, not an org/name hub id
        where = f"card '{card}': model folder" if card else "model folder"
        return CheckpointError(f"{where} {name} does not exist",
                               hint=f"fix the path in {'model: in card ' + repr(card) if card else 'the card'}, "
                                    "or copy the model there (a transformers save_pretrained folder)")
    if cached_snapshot(name, revision=source.revision) is not None:
        return None
    return _not_cached(name, source.revision, card, download_note())


def _not_cached(name: str, revision: str | None, card: str | None, why: str) -> CheckpointError:
    what = f"'{name}'" + (f" (revision {revision})" if revision else "")
    where = f"card '{card}': model {what}" if card else f"model {what}"
    field = f"model: in card '{card}'" if card else "the card's model:"
    return CheckpointError(
        f"{where} is not a local folder and not in the local Hugging Face cache ({hub_cache()}); {why}",
        hint=fetch_hint(name, set_local=field, revision=revision),
    )


def check_shared_vocabulary(tokenizers: Mapping[str, Any]) -> None:
    """Refuse a mixture of experts whose tokenizers do not share one vocabulary (token ids must mean the same)."""
    groups: dict[str, list[str]] = {}
    for name, tok in tokenizers.items():
        digest = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()
        groups.setdefault(digest, []).append(name)
    if len(groups) > 1:
        described = " vs ".join("{" + ", ".join(repr(n) for n in sorted(names)) + "}" for names in groups.values())
        raise ConfigError(
            f"the top-k mixture needs experts that share one vocabulary, but these use different ones: {described}",
            hint="use a `top_k` of 1, or mix only experts that share a tokenizer",
        )


def _from_pretrained(
    name: str, *, revision: str | None, device: str, dtype: Any, local: bool = False, card: str | None = None
) -> tuple[Any, Any]:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # A folder never needs the hub; a hub id reaches it only when the run is online (machine.online).
    offline = local or not online()
    try:
        with hub_offline():
            tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, local_files_only=offline)
            model = AutoModelForCausalLM.from_pretrained(
                name, revision=revision, dtype=dtype or "auto", local_files_only=offline
            )
    except (OSError, ValueError, SafetensorError, json.JSONDecodeError) as exc:
        if local:
            raise CheckpointError(
                f"cannot load the model in {name}: {_first_line(exc)}",
                hint="the folder is corrupted or not a transformers causal LM; rebuild it (`force`)",
            ) from exc
        if offline:
            # in the cache only in part (a config without weights or tokenizer, say), or not at all
            raise _not_cached(name, revision, card, f"{download_note()} ({_first_line(exc)})") from exc
        where = f"card '{card}': " if card else ""
        raise CheckpointError(
            f"{where}cannot load '{name}': not a local folder, and the Hugging Face Hub did not provide it "
            f"({_first_line(exc)})",
            hint=fetch_hint(name, set_local="the card's model:", revision=revision),
        ) from exc
    model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
