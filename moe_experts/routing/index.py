"""The FAISS vector index of the document router: cosine similarity over embedded training documents.

Vectors are made float32 and L2-normalised before ``add`` and ``search``, so
inner product is cosine similarity. Up to ``approximate_above`` stored vectors
the index is exact (``IndexFlatIP``); above it, HNSW (default) or IVF, whose
recall@k against exact search is measured at build time and recorded in
``IndexInfo`` (and can be required with ``min_recall``).

faiss is imported inside the functions that need it, so importing this module
(and ``moe-experts --help``) stays instant.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from moe_experts.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw", "ivf"]
INDEX_FILE = "index.faiss"
# Recall queries are stored vectors plus isotropic gaussian noise of this norm (relative to
# the unit vector), renormalised: cos(query, its source) ~ 0.9. Exact duplicates would be
# found trivially by any graph and overstate recall; fresh documents sit near, not on, stored ones.
RECALL_QUERY_NOISE = 0.5
_MIN_POINTS_PER_LIST = 39  # FAISS k-means warns (and clusters poorly) below 39 training points per centroid


@dataclass(frozen=True)
class IndexInfo:
    kind: IndexKind
    size: int  # stored vectors
    dim: int
    params: dict[str, Any] = field(default_factory=dict)  # HNSW: M, efConstruction, efSearch; IVF: nlist, nprobe
    recall_k: int = 10
    recall_at_k: float = 1.0  # against exact search, measured at build time (1.0 by construction for flat)
    recall_queries: int = 0  # 0 for flat: exact, nothing measured
    build_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexInfo:
        names = set(cls.__dataclass_fields__)
        missing = {"kind", "size", "dim"} - set(data)
        unknown = set(data) - names
        if missing or unknown or data["kind"] not in get_args(IndexKind):
            raise CheckpointError(
                f"vector index info is malformed (missing {sorted(missing)}, unknown {sorted(unknown)}, "
                f"kind {data.get('kind')!r})",
                hint="rebuild the document router's index (rerun its build with `force`)",
            )
        return cls(**{**data, "params": dict(data.get("params", {}))})


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Float32, C-contiguous, L2-normalised copy; all-zero rows stay zero."""
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-D array (n, dim) of vectors, got shape {vectors.shape}")
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)  # (N, D)
    norms = np.linalg.norm(out, axis=1, keepdims=True)  # (N, 1)
    np.divide(out, norms, out=out, where=norms > 0)  # zero rows: no division, no NaN
    return out


class VectorIndex:
    """Top-k cosine search over stored vectors; ids are row numbers in the order given to ``build``."""

    def __init__(self, index: Any, info: IndexInfo) -> None:
        self._index = index
        self.info = info

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        approximate_above: int = 10_000,
        approximate_kind: Literal["hnsw", "ivf"] = "hnsw",
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 80,
        hnsw_ef_search: int = 64,
        ivf_nlist: int | None = None,
        ivf_nprobe: int = 32,
        recall_k: int = 10,
        recall_queries: int = 500,
        min_recall: float | None = None,
        seed: int = 0,
    ) -> VectorIndex:
        """Exact index up to ``approximate_above`` vectors, HNSW or IVF above, recall measured.

        Defaults from benchmarks/faiss_search.py on 2 cores (benchmarks/RESULTS.md, 2026-11-23): one exact
        query costs ~0.1 ms per 1,000 stored 384-d vectors, so exact search passes 1 ms near 10,000; HNSW
        (M 32, efConstruction 80, efSearch 64) answered in ~0.18 ms at 100,000 with recall@10 0.996.
        IVF needed nprobe 32 to pass recall 0.95 on real embeddings.
        """
        import faiss

        if approximate_kind not in ("hnsw", "ivf"):
            raise ConfigError(f"approximate_kind {approximate_kind!r} is unknown", hint="use 'hnsw' or 'ivf'")
        if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
            raise ValueError(f"cannot build an index from vectors of shape {vectors.shape}; need (n >= 1, dim >= 1)")
        if recall_k < 1 or recall_queries < 1:
            raise ValueError(f"recall_k ({recall_k}) and recall_queries ({recall_queries}) must be >= 1")
        x = normalize(vectors)  # (N, D)
        n, dim = x.shape
        t0 = time.perf_counter()
        params: dict[str, Any] = {}
        if n <= approximate_above:
            index = faiss.IndexFlatIP(dim)
            kind: IndexKind = "flat"
        elif approximate_kind == "hnsw":
            kind = "hnsw"
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = hnsw_ef_construction
            index.hnsw.efSearch = hnsw_ef_search
            params = {"M": hnsw_m, "efConstruction": hnsw_ef_construction, "efSearch": hnsw_ef_search}
        else:
            kind = "ivf"
            nlist = ivf_nlist or max(1, round(4 * math.sqrt(n)))
            nlist = max(1, min(nlist, n // _MIN_POINTS_PER_LIST))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(x)
            index.nprobe = min(ivf_nprobe, nlist)
            params = {"nlist": nlist, "nprobe": index.nprobe}
        index.add(x)
        build_seconds = time.perf_counter() - t0

        info = IndexInfo(kind=kind, size=n, dim=dim, params=params, recall_k=min(recall_k, n),
                         build_seconds=round(build_seconds, 3))
        if kind != "flat":
            recall = _measure_recall(index, x, info.recall_k, recall_queries, seed)
            info = replace(info, recall_at_k=recall, recall_queries=recall_queries)
        logger.info("built %s index: %d x %d, %s, recall@%d %.4f (%d queries), %.1fs", kind, n, dim, params,
                    info.recall_k, info.recall_at_k, info.recall_queries, build_seconds)
        if min_recall is not None and info.recall_at_k < min_recall:
            knob = (f"hnsw_ef_search (efSearch, now {hnsw_ef_search}) or hnsw_m" if kind == "hnsw"
                    else f"ivf_nprobe (nprobe, now {info.params.get('nprobe')})")
            raise ConfigError(
                f"{kind} index recall@{info.recall_k} is {info.recall_at_k:.4f} on {recall_queries} queries, "
                f"below min_recall {min_recall}",
                hint=f"raise {knob}, or raise approximate_above to keep exact search, or lower min_recall",
            )
        return cls(index, info)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities float32 (Q, k), ids int64 (Q, k)), best first; k is clipped to the index size.

        An id of -1 (with a hugely negative similarity) marks a slot an approximate index could not fill.
        """
        import faiss

        if queries.ndim == 1:
            queries = queries[None, :]  # (D,) -> (1, D)
        if queries.ndim != 2 or queries.shape[1] != self.info.dim:
            raise ValueError(
                f"queries have shape {queries.shape} but the index stores {self.info.dim}-d vectors; "
                "embed the queries with the model the index was built with"
            )
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, self.info.size)
        q = normalize(queries)  # (Q, D)
        if q.shape[0] != 1:
            sims, ids = self._index.search(q, k)  # (Q, k), (Q, k)
            return sims, ids
        # One query is too little work to share: on 2 cores OpenMP's fork/join made it up to 38x slower.
        # omp_set_num_threads changes the calling thread's setting only, so restore it for the caller.
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            sims, ids = self._index.search(q, k)  # (1, k), (1, k)
        finally:
            faiss.omp_set_num_threads(previous)
        return sims, ids

    # ------------------------------------------------------------------ save / load
    def save(self, folder: Path) -> None:
        """Write ``folder/index.faiss``; the caller stores ``info`` in its own JSON manifest."""
        import faiss

        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(folder / INDEX_FILE))

    @classmethod
    def load(cls, folder: Path, info: IndexInfo) -> VectorIndex:
        """Read ``folder/index.faiss``; refuse a missing or corrupt file or one that does not match ``info``."""
        import faiss

        path = folder / INDEX_FILE
        fix = "rebuild the document router's index (rerun its build with `force`)"
        if not path.is_file():
            raise CheckpointError(f"vector index {path} is missing", hint=fix)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:  # FAISS reports unreadable and truncated files as RuntimeError
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise CheckpointError(f"vector index {path} is corrupted: {first_line}", hint=fix) from exc
        found = _kind_of(index, faiss)
        if (found, index.ntotal, index.d) != (info.kind, info.size, info.dim):
            raise CheckpointError(
                f"vector index {path} holds a {found} index of {index.ntotal} x {index.d} vectors, but its "
                f"manifest says {info.kind} of {info.size} x {info.dim}",
                hint=fix,
            )
        # The manifest is authoritative for search-time knobs, so raising efSearch/nprobe there takes effect.
        if info.kind == "hnsw" and "efSearch" in info.params:
            index.hnsw.efSearch = int(info.params["efSearch"])
        elif info.kind == "ivf" and "nprobe" in info.params:
            index.nprobe = int(info.params["nprobe"])
        return cls(index, info)


def _kind_of(index: Any, faiss: Any) -> str:
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return "non-inner-product"
    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    return type(index).__name__


def _measure_recall(index: Any, x: np.ndarray, k: int, n_queries: int, seed: int) -> float:
    """Mean |approximate top-k ∩ exact top-k| / k over noisy copies of stored vectors."""
    import faiss

    rng = np.random.default_rng(seed)
    n, dim = x.shape
    rows = rng.choice(n, size=n_queries, replace=n_queries > n)  # (Q,)
    noise = rng.standard_normal((n_queries, dim)).astype(np.float32)  # (Q, D)
    noise *= RECALL_QUERY_NOISE / math.sqrt(dim)  # expected norm RECALL_QUERY_NOISE
    queries = normalize(x[rows] + noise)  # (Q, D)
    exact = faiss.IndexFlatIP(dim)
    exact.add(x)
    _, truth = exact.search(queries, k)  # (Q, k)
    _, found = index.search(queries, k)  # (Q, k)
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist(), strict=True))
    return round(hits / (n_queries * k), 4)
