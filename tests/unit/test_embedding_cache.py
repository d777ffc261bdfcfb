"""The router's embedding cache (``embed_cached``): rows always match their ids, whatever a call names."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from moe_experts.routing.train_doc import embed_cached, forget_embeddings
from moe_experts.workspace import Workspace


class FakeEmbedder:
    """A unit vector per text, from its hash; counts what it embeds."""

    dim = 8
    info = SimpleNamespace(sha256="f" * 64)

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def embed(self, texts, *, max_windows=None):
        self.embedded += list(texts)
        out = np.stack([np.frombuffer(hashlib.sha256(f"{t}/{max_windows}".encode()).digest()[:32], dtype=np.uint8)
                        .astype(np.float32)[: self.dim] + 1.0 for t in texts])  # (N, D)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_duplicate_ids_in_one_call_keep_rows_and_ids_aligned(tmp_path: Path):
    setup = SimpleNamespace(workspace=Workspace(tmp_path))
    emb = FakeEmbedder()
    first = embed_cached(setup, emb, ["a", "b", "a", "c"], ["text a", "text b", "text a", "text c"])  # (4, D)
    assert emb.embedded == ["text a", "text b", "text c"]  # each text once
    np.testing.assert_allclose(first[0], first[2])
    # a second call adds a new id: every vector must still belong to its own text
    second = embed_cached(setup, emb, ["c", "d", "a", "b"], ["text c", "text d", "text a", "text b"])
    np.testing.assert_allclose(second, emb.embed(["text c", "text d", "text a", "text b"]), atol=1e-6)
    folder = tmp_path / "embeddings" / ("f" * 16)
    ids = json.loads((folder / "ids.json").read_text())
    assert ids == ["a", "b", "c", "d"] and len(np.load(folder / "vectors.npy")) == 4
    # windows are cached apart, and forgetting a document drops its window rows too
    embed_cached(setup, emb, ["a", "a#window0", "a#window1"], ["text a", "w0", "w1"], max_windows=2)
    assert (tmp_path / "embeddings" / f"{'f' * 16}-first2" / "vectors.npy").exists()
    assert forget_embeddings(setup, {"a"}) == 1 + 3
    assert json.loads((folder / "ids.json").read_text()) == ["b", "c", "d"]
