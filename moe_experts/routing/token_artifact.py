"""The token-level router's folder ``routers/token/``, published as one unit like the document router's::

    CURRENT          the name of the live version (replaced atomically)
    v-<stamp>/       one version: a MixtralForCausalLM checkpoint with its tokenizer (loads with
                     AutoModelForCausalLM), its build manifest (moe_experts.json: what it was merged from,
                     the recipe, training, health, every file's SHA-256), health.json and health.md

A save writes a new version folder, then points CURRENT at it (``workspace.publish_version``); a reader
resolves CURRENT once (``token_router_dir``) and reads every file from that version, so a retrain never
shows it half a checkpoint. A token router saved before versions, with its files directly in
``routers/token/``, is still read, and the next save removes those files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from moe_experts.errors import MissingArtifactError
from moe_experts.modeling.checkpoints import LoadedModel, load_checkpoint, save_checkpoint
from moe_experts.workspace import (
    MANIFEST,
    Workspace,
    live_dir,
    publish_version,
    read_json,
    read_live,
    write_json_atomic,
)

HEALTH_JSON = "health.json"
HEALTH_MD = "health.md"
REBUILD = "rebuild it: `moe-experts train-router --kind token --force`"
BUILD = "build it with `moe-experts train-router --kind token`"


def token_router_home(root: Path) -> Path:
    """``routers/token/`` of the workspace at ``root``: where versions are published (CURRENT and v-*/)."""
    return Workspace(root).router_dir("token")


def token_router_dir(root: Path) -> Path:
    """The folder holding the live token router's files, resolved once: a reader takes every file from this one
    path. (``routers/token/`` itself for a router saved before versions, or when none is built.)"""
    return live_dir(token_router_home(root), hint=REBUILD)


def token_manifest(folder: Path) -> dict[str, Any] | None:
    """The build manifest of the token router whose files are in ``folder`` (see ``token_router_dir``), or None."""
    try:
        return read_json(folder / MANIFEST)
    except FileNotFoundError:
        return None


def publish_token_router(model: Any, tokenizer: Any, root: Path, manifest: dict[str, Any], *,
                         health: dict[str, Any], health_text: str) -> dict[str, Any]:
    """Write the checkpoint, its manifest and health report as a new version and make it the live one; the
    manifest written."""
    with publish_version(token_router_home(root)) as new:
        written = save_checkpoint(model, tokenizer, new.tmp, manifest)
        write_json_atomic(new.tmp / HEALTH_JSON, health)
        (new.tmp / HEALTH_MD).write_text("# Token router health\n\n```\n" + health_text + "\n```\n", encoding="utf-8")
    return written


def load_token_router(root: Path, *, check: Callable[[dict[str, Any]], None] | None = None,
                      device: str = "cpu") -> LoadedModel:
    """The live token router, every file from one version (hash-checked); ``check`` may refuse its manifest
    before the weights load. A version pruned by a save while it loads is replaced by the new live one."""
    home = token_router_home(root)

    def read(folder: Path) -> LoadedModel:
        manifest = token_manifest(folder)
        if manifest is None:
            raise MissingArtifactError(f"no token-level router in {home}", hint=BUILD)
        if check is not None:
            check(manifest)
        return load_checkpoint(folder, device=device)

    return read_live(home, read, what="the token-level router", hint=REBUILD)
