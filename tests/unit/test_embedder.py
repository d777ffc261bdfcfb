"""The bundled sentence embedder: offline loading, chunking without loss, aggregation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moe_experts.errors import ConfigError
from moe_experts.routing.embedder import Embedder, resolve_embedder, weights_hash


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


LONG = " ".join(f"Clause {i}: the licensee shall not sublicense the software to third parties." for i in range(80))


def test_default_embedder_is_the_bundled_minilm(embedder: Embedder):
    ident, path = resolve_embedder("default")
    assert "all-MiniLM-L6-v2" in ident and "site-packages" in str(path)
    assert embedder.dim == 384 and embedder.max_seq_length == 256


def test_chunks_cover_the_whole_text_in_order(embedder: Embedder):
    chunks = embedder.chunks(LONG)
    assert len(chunks) >= 4
    assert "".join(c for c, _ in chunks) == LONG  # nothing past the window is dropped
    assert all(n <= embedder.window for _, n in chunks)
    assert embedder.chunks("short text") == [("short text", 2)]


def test_long_text_is_the_weighted_mean_of_its_chunks(embedder: Embedder):
    chunks = embedder.chunks(LONG)
    parts = embedder.embed([c for c, _ in chunks])  # (P, D)
    weights = np.array([n for _, n in chunks], dtype=np.float32)
    expected = (parts * weights[:, None]).sum(axis=0)
    expected /= np.linalg.norm(expected)
    got = embedder.embed([LONG])[0]
    assert np.allclose(got, expected, atol=1e-5)
    # and it differs from the first window alone: the tail counts
    assert not np.allclose(got, parts[0], atol=1e-3)


def test_bounded_windows_are_the_first_windows_of_the_whole_text(embedder: Embedder):
    full = embedder.chunks(LONG)
    # mixed-length words and a word cut by the prefix: the prefix tokenization must not shift any window
    odd = " ".join(f"unbelievably{i} x{'y' * (i % 17)}" for i in range(3000))
    for text in (LONG, odd):
        whole = embedder.chunks(text)
        for k in (1, 2, 3):
            assert embedder.chunks(text, k) == whole[:k]
    assert embedder.chunks("short text", 1) == [("short text", 2)]
    assert len(embedder.chunks(LONG, 100)) == len(full)
    capped = embedder.embed([LONG], max_windows=2)[0]
    parts = embedder.embed([c for c, _ in full[:2]])  # (2, D)
    weights = np.array([n for _, n in full[:2]], dtype=np.float32)
    expected = (parts * weights[:, None]).sum(axis=0)
    assert np.allclose(capped, expected / np.linalg.norm(expected), atol=1e-5)


def test_vectors_are_unit_and_batches_are_independent(embedder: Embedder):
    texts = ["hypertension and fever", "def f(x): return x", LONG]
    together = embedder.embed(texts)
    assert together.dtype == np.float32 and together.shape == (3, 384)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(together[1], embedder.embed([texts[1]])[0], atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_a_folder_that_is_not_a_model_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="not a local sentence-transformers folder"):
        resolve_embedder(str(tmp_path))


def test_weights_hash_sees_a_changed_file(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(b"a")
    first = weights_hash(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"b")
    assert weights_hash(tmp_path) != first


def test_bulk_precision(embedder: Embedder, monkeypatch):
    """bf16 embedding (a router's training documents) stays within a cosine of 0.9995 of fp32; auto follows the
    environment, then the device; requests are fp32 by default, so a vector does not depend on its batch."""
    texts = ["hypertension and fever", "def f(x): return x", LONG]
    fp32 = embedder.embed(texts)
    assert embedder.precision == "fp32"
    try:
        embedder.precision = "bf16"
        bf16 = embedder.embed(texts)
    finally:
        embedder.precision = "fp32"
    assert bf16.dtype == np.float32 and np.allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert (fp32 * bf16).sum(axis=1).min() > 0.9995
    assert not np.array_equal(fp32, bf16)  # it did run in bf16
    monkeypatch.setenv("MOE_EXPERTS_EMBED_PRECISION", "fp32")
    assert Embedder(precision="auto").precision == "fp32"
    monkeypatch.setenv("MOE_EXPERTS_EMBED_PRECISION", "fp16")
    with pytest.raises(ConfigError, match="bf16, fp32 or auto"):
        Embedder(precision="auto")
