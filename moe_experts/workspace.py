"""The workspace folder: where every artifact of a run lives, and how it is written.

Layout (README.md, "Artifacts", says what each holds)::

    runs/<name>/
      workspace.json                    preset and versions the workspace was created with
      corpora/<domain>/{train,val,test}.jsonl, manifest.json
      tokenizer/                        tokenizer.json + build manifest
      tokens/<tokenizer hash>/<domain>/{train,val,test}.npy   token streams (cache)
      checkpoints/<stage>/checkpoint-N/ resumable training state
      models/<name>/                    save_pretrained + build manifest
      embeddings/<embedder hash>/       cached document embeddings
      routers/doc/, routers/token/      the document router; the token-level MoE checkpoint
                                        (each published as CURRENT + v-<stamp>/, see below)
      eval/suites/                      routing suites built from the test split
      reports/                          sanity check and evaluation reports

Every artifact is written into a temporary sibling folder and renamed into
place, so an interrupted build leaves the old artifact or none, never half.
Routers, which readers load while they may be retrained, are published as
versions behind an atomic pointer (``publish_version``), so a reader never sees
half of one either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from moe_experts import __version__
from moe_experts.errors import CheckpointError, MissingArtifactError, StaleArtifactError, WorkspaceError

MANIFEST = "moe_experts.json"  # the build manifest inside every artifact folder
ENV_WORKSPACE = "MOE_EXPERTS_WORKSPACE"
TMP_PREFIX = ".tmp-"
CURRENT = "CURRENT"  # in a versioned artifact folder: names the live version folder
KEEP_VERSIONS = 2  # the live one and the one before it, which a slow reader may still be opening
LOAD_ATTEMPTS = 5  # a reader re-resolves CURRENT this many times when saves keep pruning what it was reading

T = TypeVar("T")


@dataclass(frozen=True)
class Workspace:
    root: Path
    read_only: bool = False  # a reader's view: caches are computed but never written (``ask``, ``eval --out``)

    # ------------------------------------------------------------------ paths
    def corpus_dir(self, domain: str) -> Path:
        return self.root / "corpora" / domain

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    def tokens_dir(self, tokenizer_hash: str, domain: str) -> Path:
        return self.root / "tokens" / tokenizer_hash / domain

    def model_dir(self, name: str) -> Path:
        return self.models_dir / name

    def checkpoints_dir(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage

    @property
    def corpora_dir(self) -> Path:
        return self.root / "corpora"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def router_dir(self, kind: str) -> Path:
        """routers/<kind>/: ``doc`` (the document router), ``token`` (the token-level MoE)."""
        return self.root / "routers" / kind

    def embeddings_dir(self, embedder_hash: str) -> Path:
        return self.root / "embeddings" / embedder_hash[:16]

    @property
    def suites_dir(self) -> Path:
        return self.root / "eval" / "suites"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def sanity_dir(self) -> Path:
        return self.reports_dir / "sanity"

    # ------------------------------------------------------------------ lifecycle
    def open(self, preset_name: str, preset_fingerprint: str, *, create: bool = True, write: bool = True) -> None:
        """Create (or check) the workspace for a preset; refuse one built for another preset.

        A reader (``create`` and ``write`` False: ``ask``, ``data show``, ``eval --out``) never creates or
        writes anything: a missing workspace is an error naming the path, and a read-only one is fine.
        """
        meta_path = self.root / "workspace.json"
        if not meta_path.exists() and not create:
            raise MissingArtifactError(
                f"no workspace at {self.root} (no workspace.json)",
                hint="check `workspace` (or MOE_EXPERTS_WORKSPACE) and the folder you run from; "
                     "`moe-experts quickstart` builds a workspace",
            )
        if meta_path.exists():
            meta = read_json(meta_path)
            if meta.get("preset") != preset_name:
                raise WorkspaceError(
                    f"workspace {self.root} was created for preset '{meta.get('preset')}', not '{preset_name}'",
                    hint=f"use `preset` {meta.get('preset')}, or another `workspace` for preset {preset_name}",
                )
            if meta.get("preset_fingerprint") != preset_fingerprint:
                raise WorkspaceError(
                    f"preset '{preset_name}' changed since workspace {self.root} was created "
                    f"({meta.get('preset_fingerprint')} -> {preset_fingerprint})",
                    hint="models in this workspace were built with the old settings; use a new `workspace`",
                )
            if write:
                self._check_writable()
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(
                f"cannot create workspace {self.root}: {exc.strerror}",
                hint="point `workspace` (or MOE_EXPERTS_WORKSPACE) at a folder you can write",
            ) from exc
        self._check_writable()
        write_json_atomic(
            meta_path,
            {
                "preset": preset_name,
                "preset_fingerprint": preset_fingerprint,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": versions(),
            },
        )

    def _check_writable(self) -> None:
        probe = self.root / f"{TMP_PREFIX}probe-{os.getpid()}"
        try:
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise WorkspaceError(
                f"workspace {self.root} is not writable: {exc.strerror}",
                hint="point `workspace` (or MOE_EXPERTS_WORKSPACE) at a folder you can write",
            ) from exc

    def clean_stale_temporaries(self) -> list[Path]:
        """Remove what interrupted builds left (temporary folders and files of processes that are gone); the paths."""
        removed: list[Path] = []
        if not self.root.exists():
            return removed
        for tmp in sorted(self.root.rglob(f"{TMP_PREFIX}*")):
            if not tmp.exists() or _owned_by_live_process(tmp):
                continue
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
        return removed


def writable(folder: Path, ws: Workspace | None = None) -> bool:
    """Whether to write in ``folder``: not when ``ws`` is a reader's view, nor where this process cannot create
    files (checked on ``folder`` or its nearest existing parent)."""
    if ws is not None and ws.read_only:
        return False
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK | os.X_OK)


def _owned_by_live_process(tmp: Path) -> bool:
    # Temporary folders are named .tmp-<name>-<pid>; never delete one a running build owns.
    pid_text = tmp.name.rsplit("-", 1)[-1].split(".", 1)[0]  # .tmp-<name>-<pid>, or .tmp-<name>-<pid>.<ext>
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_workspace(workspace: str | None, preset_name: str) -> Workspace:
    """--workspace, else $MOE_EXPERTS_WORKSPACE, else ./runs/<preset>."""
    path = workspace or os.environ.get(ENV_WORKSPACE) or f"runs/{preset_name}"
    return Workspace(Path(path).expanduser().absolute())


# ---------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{TMP_PREFIX}{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f"{TMP_PREFIX}old-{target.name}-{os.getpid()}"
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------- versioned artifacts
# An artifact that readers load while it may be rebuilt (a router) is published as one unit:
#     <folder>/CURRENT       the name of the live version (replaced atomically)
#     <folder>/v-<stamp>/    one version's files
# A save writes a new version folder, then points CURRENT at it; the previous version stays for readers
# still loading it. A reader resolves CURRENT once and reads that version's files, so it sees a complete
# old artifact or a complete new one, never a mix. An artifact saved before versions existed, with its
# files directly in <folder>, is still read (no CURRENT), and its files are removed by the next save.


@dataclass(frozen=True)
class NewVersion:
    tmp: Path  # write the version's files here
    path: Path  # where they are once published


def live_dir(folder: Path, *, hint: str | None = None) -> Path:
    """The folder holding the live version's files: the one CURRENT names (or ``folder`` itself, for an artifact
    saved before versions existed, or none). ``hint``: how to rebuild it, for a corrupted CURRENT."""
    pointer = folder / CURRENT
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return folder
    if not name or "/" in name or name.startswith("."):
        raise CheckpointError(f"{pointer} is corrupted (it names {name!r}, not a version folder)", hint=hint)
    return folder / name


@contextlib.contextmanager
def publish_version(folder: Path, *, unversioned: Sequence[str] | None = None) -> Iterator[NewVersion]:
    """Yield a new, empty temporary folder; if the block succeeds, publish it as ``folder``'s live version.

    Publishing is one rename into a version folder, then one atomic replace of CURRENT. Afterwards versions
    older than the last ``KEEP_VERSIONS`` are deleted, and so are the files of an artifact saved before
    versions: ``unversioned`` names them (None: every file in ``folder`` but CURRENT and temporaries).
    """
    folder.mkdir(parents=True, exist_ok=True)
    version = f"v-{time.time_ns():020d}-{os.getpid()}"  # sorts by when it was written
    tmp = folder / f"{TMP_PREFIX}{version}"
    tmp.mkdir()
    try:
        yield NewVersion(tmp, folder / version)
        tmp.rename(folder / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = folder / f"{TMP_PREFIX}{CURRENT}-{os.getpid()}"
    pointer.write_text(version + "\n", encoding="utf-8")
    os.replace(pointer, folder / CURRENT)  # the publication: readers now resolve the new version
    _prune_versions(folder, version, unversioned)


def _prune_versions(folder: Path, live: str, unversioned: Sequence[str] | None) -> None:
    versions = sorted(p.name for p in folder.glob("v-*") if p.is_dir())
    for old in versions[: max(0, len(versions) - KEEP_VERSIONS)]:
        if old != live:
            shutil.rmtree(folder / old, ignore_errors=True)
    if unversioned is None:
        unversioned = [p.name for p in folder.iterdir()
                       if p.is_file() and p.name != CURRENT and not p.name.startswith(TMP_PREFIX)]
    for name in unversioned:
        (folder / name).unlink(missing_ok=True)


def read_live(folder: Path, read: Callable[[Path], T], *, what: str, hint: str) -> T:
    """``read(live version folder)``; read again from the new live version when a save published one and pruned
    the version being read (up to ``LOAD_ATTEMPTS`` times). A file that vanished or became unreadable for any
    other reason is a CheckpointError naming ``what`` and ``hint``."""
    for attempt in range(LOAD_ATTEMPTS):
        live = live_dir(folder, hint=hint)
        try:
            return read(live)
        except Exception as exc:
            # any failure while a newer version went live: its files may have been pruned mid-read, and the
            # library reading them fails with whatever error it meets (a clean-clone run once saw a TypeError
            # there), so read the new version; with no new version, the error is raised as it is
            if attempt < LOAD_ATTEMPTS - 1 and live_dir(folder, hint=hint) != live:
                continue
            if isinstance(exc, OSError):  # a file vanished or became unreadable between two reads
                raise CheckpointError(f"cannot read {what} in {live}: {exc}", hint=hint) from exc
            raise
    raise AssertionError("unreachable")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise WorkspaceError(
            f"{path} is unreadable or corrupted: {exc}", hint="rebuild the artifact it belongs to (`force`)"
        ) from exc


# ---------------------------------------------------------------------- manifests


def write_manifest(folder: Path, data: dict[str, Any]) -> None:
    write_json_atomic(folder / MANIFEST, {"moe_experts_version": __version__, **data})


def read_manifest(folder: Path, *, what: str, build_hint: str) -> dict[str, Any]:
    """The build manifest of an artifact; a clear error when the artifact is missing."""
    path = folder / MANIFEST
    if not path.exists():
        raise MissingArtifactError(f"{what} is not built yet ({folder} has no {MANIFEST})", hint=build_hint)
    return read_json(path)


def check_inputs(what: str, recorded: dict[str, Any], current: dict[str, Any], rebuild_hint: str) -> None:
    """Refuse an artifact whose recorded inputs differ from the current ones, naming each difference."""
    diffs = [
        f"{key}: built from {recorded.get(key)!r}, workspace now has {value!r}"
        for key, value in current.items()
        if recorded.get(key) != value
    ]
    if diffs:
        raise StaleArtifactError(f"{what} is stale:\n  " + "\n  ".join(diffs), hint=rebuild_hint)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------- verification at load

VERIFY_ENV = "MOE_EXPERTS_VERIFY"  # "full" (default): every file's SHA-256; "size": byte counts only (fast path)
_VERIFIED: dict[tuple[str, int, int, int], str] = {}  # (path, size, mtime_ns, inode) -> digest checked in this process


def verify_mode() -> str:
    mode = os.environ.get(VERIFY_ENV, "full").strip().lower() or "full"
    if mode not in ("full", "size"):
        raise WorkspaceError(f"{VERIFY_ENV}={mode!r} is not a verification mode",
                             hint=f"set {VERIFY_ENV} to full (every file's SHA-256, the default) or size (byte counts only)")
    return mode


def file_records(folder: Path, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """{name: {"sha256", "bytes"}} of ``names`` in ``folder`` (default: every file but the build manifest)."""
    if names is None:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST and not p.name.startswith(TMP_PREFIX))
    out = {}
    for name in names:
        path = folder / name
        out[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def verify_files(folder: Path, records: dict[str, dict[str, Any]], *, what: str, hint: str) -> None:
    """Refuse ``folder`` when a recorded file is missing, of another size, or (mode ``full``) of another SHA-256.

    A file whose digest was checked earlier in this process, and whose size, time and inode have not
    changed since, is not hashed again.
    """
    from moe_experts.errors import CheckpointError

    mode = verify_mode()
    for name, rec in records.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{what} is incomplete: {name} is missing ({path})", hint=hint)
        st = path.stat()
        if st.st_size != rec["bytes"]:
            raise CheckpointError(f"{what} is corrupted: {name} has {st.st_size:,} bytes where {rec['bytes']:,} were "
                                  f"written ({path})", hint=hint)
        if mode == "size":
            continue
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        digest = _VERIFIED.get(key) or sha256_file(path)
        if digest != rec["sha256"]:
            raise CheckpointError(f"{what} is corrupted: {name} does not match the SHA-256 recorded when it was "
                                  f"written ({path})", hint=hint)
        _VERIFIED[key] = digest


def versions() -> dict[str, str]:
    """Versions of the packages an artifact's content depends on."""
    import importlib.metadata

    out = {"python": sys.version.split()[0], "moe_experts": __version__}
    for dist in ("torch", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
