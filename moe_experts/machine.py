"""The machine a run is on: what a measurement records about it, and whether the run may reach the model hub.

Offline is the default. A Hugging Face id (a card's model, a recipe's embedder, an ``hf_dataset``
source) resolves from the local Hugging Face cache only, and fails at once with the way to fetch it,
instead of spending a minute in network retries. Going online is an explicit choice, made in one
place: :func:`online` (``MOE_EXPERTS_ONLINE=1``; ``moe-experts --online`` sets it). Every call that
can touch the hub asks it, and runs inside :func:`hub_offline` unless it is on.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ONLINE_ENV = "MOE_EXPERTS_ONLINE"
COMPILE_ENV = "MOE_EXPERTS_COMPILE"  # 0 / off / false / no: train eager, never torch.compile (--no-compile)
_TRUE = {"1", "true", "yes", "on"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_forbidden() -> bool:
    """Whether the Hugging Face libraries were told to stay offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def online() -> bool:
    """Whether loading may download from the Hugging Face Hub: only when asked for, and not forbidden."""
    return _env_true(ONLINE_ENV) and not hub_forbidden()


@contextmanager
def hub_offline() -> Iterator[None]:
    """Keep the Hugging Face libraries off the network for the calls inside, unless the run is online.

    ``local_files_only`` keeps a load in the cache, but huggingface_hub still fetches its agent registry
    from the hub (up to 3 s when the network drops packets) unless HF_HUB_OFFLINE is set, and
    ``datasets.load_dataset`` has no ``local_files_only``. Both libraries read HF_HUB_OFFLINE once, on
    import, so the setting they consult at call time is switched here, for these calls only.
    """
    if online():
        yield
        return
    from huggingface_hub import constants

    datasets_config = sys.modules.get("datasets.config")
    before = constants.HF_HUB_OFFLINE, getattr(datasets_config, "HF_HUB_OFFLINE", None)
    constants.HF_HUB_OFFLINE = True
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before[0]
        if datasets_config is not None:
            datasets_config.HF_HUB_OFFLINE = before[1]


def hub_cache() -> str:
    """The Hugging Face hub cache folder that loading reads (HF_HUB_CACHE, else $HF_HOME/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str, filename: str = "config.json", *, revision: str | None = None,
                    repo_type: str = "model") -> Path | None:
    """The snapshot folder of ``repo_id`` in the local hub cache when it holds ``filename``; None otherwise.

    Reads the cache folders only (never the network); an id that cannot be a hub id is not cached.
    """
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision, repo_type=repo_type)
    except (HFValidationError, ValueError):
        return None
    return Path(found).parent if isinstance(found, str) else None


def download_note() -> str:
    """What happens to a hub id that is not cached: downloaded when first loaded, or (offline) nothing and why."""
    if online():
        return "downloads are on, so it is downloaded when first loaded"
    if _env_true(ONLINE_ENV) and hub_forbidden():
        return "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, which keeps downloads off"
    return "this run is offline (the default), so nothing is downloaded"


def allow_downloads_hint() -> str:
    """The last way out of a message about a hub id that did not load: let the run download it."""
    if online():
        return "or check the id, the revision and this machine's access to the hub (HF_TOKEN for a gated model)"
    if _env_true(ONLINE_ENV) and hub_forbidden():
        return "or unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE so that downloads are allowed"
    return f"or, where this machine reaches the hub, allow downloads: {ONLINE_ENV}=1 (or moe-experts --online)"


def fetch_hint(repo_id: str, *, set_local: str, revision: str | None = None) -> str:
    """How to make the model ``repo_id`` available offline, or load it online; ``set_local``: where a folder goes."""
    rev = f" --revision {revision}" if revision else ""
    return (
        f"where the hub is reachable, run `hf download {repo_id}{rev}` (older clients: `huggingface-cli download "
        f"{repo_id}{rev}`), then copy that machine's hub cache to {hub_cache()} here or point HF_HOME at a copy; "
        f"or run `hf download {repo_id}{rev} --local-dir DIR` and set {set_local} to DIR; {allow_downloads_hint()}"
    )
