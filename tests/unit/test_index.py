"""The document router's FAISS index: exactness, invariances, recall bookkeeping, round trips, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from moe_experts.errors import CheckpointError, ConfigError
from moe_experts.routing.index import INDEX_FILE, IndexInfo, VectorIndex, normalize


def clustered(n: int, dim: int = 64, clusters: int = 40, spread: float = 0.8, seed: int = 0) -> np.ndarray:
    """Gaussian clusters: a point's cos to its centre is ~0.8, to another cluster's points ~0."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))  # (C, D)
    labels = rng.integers(0, clusters, size=n)  # (N,)
    return centres[labels] + spread * rng.standard_normal((n, dim))  # (N, D)


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = normalize(q) @ normalize(x).T  # (Q, N)
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # (Q, k)
    return np.take_along_axis(sims, ids, axis=1), ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    both = clustered(3200, seed=1)  # the same clusters for stored vectors and held-out queries
    return both[:3000], both[3000:]


@pytest.fixture(scope="module", params=["hnsw", "ivf"])
def approximate(request, data) -> VectorIndex:
    return VectorIndex.build(data[0], approximate_above=1000, approximate_kind=request.param, recall_queries=200)


# ---------------------------------------------------------------------- normalize


def test_normalize_gives_unit_float32_rows_and_keeps_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]])
    out = normalize(x)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)
    assert x[0, 0] == 3.0  # a copy, the caller's array is untouched
    assert normalize(np.asfortranarray(x)).flags.c_contiguous
    with pytest.raises(ValueError, match="2-D"):
        normalize(np.ones(3))


# ---------------------------------------------------------------------- exact search


def test_flat_search_returns_exact_top_k():
    rng = np.random.default_rng(0)
    x, q = rng.standard_normal((500, 32)), rng.standard_normal((20, 32))
    index = VectorIndex.build(x)
    assert index.info.kind == "flat" and index.info.params == {} and index.info.recall_at_k == 1.0
    sims, ids = index.search(q, 7)
    want_sims, want_ids = brute_force(x, q, 7)
    assert sims.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (20, 7)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)


def test_scale_of_stored_vectors_and_queries_is_irrelevant():
    rng = np.random.default_rng(2)
    x, q = rng.standard_normal((300, 16)), rng.standard_normal((10, 16))
    scales = rng.uniform(0.01, 100.0, size=(300, 1))  # (N, 1)
    sims_a, ids_a = VectorIndex.build(x).search(q, 5)
    sims_b, ids_b = VectorIndex.build(x * scales).search(q * 7.5, 5)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(sims_a, sims_b, atol=1e-5)
    assert np.all(sims_a <= 1.0 + 1e-5)  # cosine, not raw inner product


def test_k_larger_than_size_is_clipped_and_one_d_query_accepted():
    x = np.eye(5, 8)
    sims, ids = VectorIndex.build(x).search(x[2], 10)
    assert ids.shape == (1, 5) and sims.shape == (1, 5)
    assert ids[0, 0] == 2 and sorted(ids[0].tolist()) == [0, 1, 2, 3, 4]


def test_bad_inputs_are_refused():
    index = VectorIndex.build(np.ones((4, 8)))
    with pytest.raises(ValueError, match="8-d"):
        index.search(np.ones((2, 9)), 1)
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.ones(8), 0)
    with pytest.raises(ValueError, match="shape"):
        VectorIndex.build(np.empty((0, 8)))
    with pytest.raises(ConfigError, match="approximate_kind"):
        VectorIndex.build(np.ones((4, 8)), approximate_above=1, approximate_kind="annoy")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- approximate indexes


def test_threshold_picks_flat_at_or_below_and_approximate_above(data):
    x = data[0][:1000]
    assert VectorIndex.build(x, approximate_above=1000).info.kind == "flat"
    assert VectorIndex.build(x, approximate_above=999).info.kind == "hnsw"
    assert VectorIndex.build(x, approximate_above=999, approximate_kind="ivf").info.kind == "ivf"


def test_approximate_index_records_recall_and_finds_neighbours(approximate, data):
    x, held_out = data
    info = approximate.info
    assert info.size == 3000 and info.dim == 64 and info.recall_k == 10 and info.recall_queries == 200
    assert set(info.params) == ({"M", "efConstruction", "efSearch"} if info.kind == "hnsw" else {"nlist", "nprobe"})
    assert 0.9 <= info.recall_at_k <= 1.0
    _, found = approximate.search(held_out, 10)
    _, truth = brute_force(x, held_out, 10)
    assert recall(found, truth) >= 0.9  # on queries the build never saw


@pytest.mark.parametrize(("kind", "knob"), [("hnsw", "efSearch"), ("ivf", "nprobe")])
def test_min_recall_not_reached_raises_config_error_naming_the_knob(kind, knob):
    x = np.random.default_rng(3).standard_normal((2000, 64))  # no structure: hard for weak settings
    weak = {"hnsw_m": 4, "hnsw_ef_search": 1} if kind == "hnsw" else {"ivf_nprobe": 1}
    measured = VectorIndex.build(x, approximate_above=100, approximate_kind=kind, recall_queries=100, **weak)
    assert measured.info.recall_at_k < 0.99
    with pytest.raises(ConfigError, match=knob) as err:
        VectorIndex.build(x, approximate_above=100, approximate_kind=kind, recall_queries=100, min_recall=0.99, **weak)
    assert f"{measured.info.recall_at_k:.4f}" in str(err.value)


# ---------------------------------------------------------------------- threads


class _RecordingIndex:
    """Wraps a FAISS index and records the OpenMP thread count each search ran with."""

    def __init__(self, inner) -> None:
        self.inner, self.threads = inner, []

    def search(self, q, k):
        self.threads.append(faiss.omp_get_max_threads())
        return self.inner.search(q, k)


def test_single_query_runs_on_one_thread_and_restores_the_count(data):
    index = VectorIndex.build(data[0])
    recorder = _RecordingIndex(index._index)
    index._index = recorder
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)  # a distinctive value, whatever the machine has
    try:
        index.search(data[1][0], 5)
        assert faiss.omp_get_max_threads() == 3
        index.search(data[1][:4], 5)
        assert recorder.threads == [1, 3]  # single query alone, batches with the caller's count
    finally:
        faiss.omp_set_num_threads(before)


# ---------------------------------------------------------------------- save / load


@pytest.fixture(scope="module")
def built(data) -> dict[str, VectorIndex]:
    x = data[0]
    return {
        "flat": VectorIndex.build(x),
        "hnsw": VectorIndex.build(x, approximate_above=100, recall_queries=50),
        "ivf": VectorIndex.build(x, approximate_above=100, approximate_kind="ivf", recall_queries=50),
    }


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip_gives_identical_results(built, data, kind, tmp_path: Path):
    index = built[kind]
    index.save(tmp_path)
    info = IndexInfo.from_json(json.loads(json.dumps(index.info.to_json())))  # as the router manifest stores it
    assert info == index.info
    loaded = VectorIndex.load(tmp_path, info)
    for queries in (data[1], data[1][0]):  # batch and single-query paths
        sims_a, ids_a = index.search(queries, 10)
        sims_b, ids_b = loaded.search(queries, 10)
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(sims_a, sims_b)


def test_load_applies_the_manifest_search_knob(tmp_path: Path):
    x = np.random.default_rng(4).standard_normal((2000, 32))
    q = np.random.default_rng(5).standard_normal((100, 32))
    index = VectorIndex.build(x, approximate_above=100, hnsw_m=4, hnsw_ef_search=1, recall_queries=50)
    index.save(tmp_path)
    _, truth = brute_force(x, q, 10)
    narrow = VectorIndex.load(tmp_path, index.info).search(q, 10)[1]
    wide_info = replace(index.info, params={**index.info.params, "efSearch": 256})
    wide = VectorIndex.load(tmp_path, wide_info).search(q, 10)[1]
    assert recall(wide, truth) > recall(narrow, truth) + 0.2


def test_load_refuses_missing_and_corrupted_files(built, tmp_path: Path):
    info = built["hnsw"].info
    with pytest.raises(CheckpointError, match="missing") as err:
        VectorIndex.load(tmp_path, info)
    assert INDEX_FILE in str(err.value) and "fix:" in str(err.value)
    built["hnsw"].save(tmp_path)
    path = tmp_path / INDEX_FILE
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # truncated, as by a crash mid-copy
    with pytest.raises(CheckpointError, match="corrupted"):
        VectorIndex.load(tmp_path, info)
    path.write_bytes(b"not a faiss index" * 10)
    with pytest.raises(CheckpointError, match="corrupted"):
        VectorIndex.load(tmp_path, info)


@pytest.mark.parametrize(
    "change", [{"size": 2999}, {"dim": 65}, {"kind": "flat", "params": {}}], ids=["size", "dim", "kind"]
)
def test_load_refuses_an_info_mismatch(built, tmp_path: Path, change):
    built["hnsw"].save(tmp_path)
    with pytest.raises(CheckpointError, match="manifest says"):
        VectorIndex.load(tmp_path, replace(built["hnsw"].info, **change))


def test_info_from_json_refuses_malformed_data():
    with pytest.raises(CheckpointError, match="malformed"):
        IndexInfo.from_json({"kind": "annoy", "size": 1, "dim": 2})
    with pytest.raises(CheckpointError, match="malformed"):
        IndexInfo.from_json({"kind": "flat", "size": 1})


def test_importing_the_module_does_not_import_faiss():
    code = "import sys, moe_experts.routing.index; assert 'faiss' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
