"""Exact and near-duplicate removal.

Exact duplicates: equal after folding case and whitespace. Near duplicates:
MinHash signatures over word 5-gram shingles, candidate pairs from LSH banding,
kept as duplicates when the signatures agree on at least ``threshold`` of their
positions (an unbiased estimate of Jaccard similarity). Documents are processed
in order and the first of a group is kept, so the result is deterministic.

Everything is vectorised with numpy: signatures for a whole corpus are computed
in blocks of shingles with ``np.minimum.reduceat``.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from moe_experts.data.clean import dedup_key

_WORD = re.compile(r"\w+")
_MERSENNE = np.uint64((1 << 61) - 1)


@dataclass(frozen=True)
class DedupResult:
    keep: list[int]  # indices of kept documents, in input order
    exact_of: dict[int, int]  # dropped index -> the kept index it duplicates exactly
    near_of: dict[int, int]  # dropped index -> the kept index it nearly duplicates


class MinHasher:
    """MinHash over word n-gram shingles with ``num_perm`` seeded hash functions."""

    def __init__(self, num_perm: int = 64, ngram: int = 5, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        # Multiply-shift hashing: odd multipliers, 64-bit wrap-around arithmetic.
        self.a = rng.integers(1, np.iinfo(np.int64).max, size=num_perm, dtype=np.int64).astype(np.uint64) | np.uint64(1)
        self.b = rng.integers(0, np.iinfo(np.int64).max, size=num_perm, dtype=np.int64).astype(np.uint64)
        self.num_perm = num_perm
        self.ngram = ngram

    def shingles(self, text: str) -> np.ndarray:
        """Distinct 64-bit ids of the text's word n-grams (one id for very short texts)."""
        words = _WORD.findall(text.lower())
        ids = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
        n = min(self.ngram, max(len(ids), 1))
        if len(ids) == 0:
            return np.zeros(1, dtype=np.uint64)
        span = len(ids) - n + 1
        h = np.zeros(span, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(n):
                h = h * np.uint64(1_000_003) + ids[j : j + span]  # polynomial rolling hash, wraps mod 2**64
        return np.unique(h % _MERSENNE)

    def signatures(self, texts: Sequence[str], block: int = 100_000) -> np.ndarray:
        """(N, num_perm) uint32 signatures."""
        sigs = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        start = 0
        while start < len(texts):
            shingle_sets, total, stop = [], 0, start
            while stop < len(texts) and (total < block or stop == start):
                s = self.shingles(texts[stop])
                shingle_sets.append(s)
                total += len(s)
                stop += 1
            flat = np.concatenate(shingle_sets)  # (S,)
            offsets = np.cumsum([0] + [len(s) for s in shingle_sets[:-1]])  # (n_docs,)
            with np.errstate(over="ignore"):
                hashed = (self.a[:, None] * flat[None, :] + self.b[:, None]) >> np.uint64(32)  # (P, S)
            sigs[start:stop] = np.minimum.reduceat(hashed, offsets, axis=1).T.astype(np.uint32)  # (n_docs, P)
            start = stop
        return sigs


def deduplicate(
    texts: Sequence[str],
    *,
    threshold: float = 0.8,
    num_perm: int = 64,
    bands: int = 16,
    progress: Callable[[int], None] | None = None,
) -> DedupResult:
    """Indices to keep after exact then near-duplicate removal (first occurrence wins)."""
    if num_perm % bands:
        raise ValueError("num_perm must be divisible by bands")
    exact_of: dict[int, int] = {}
    first_by_key: dict[bytes, int] = {}
    survivors: list[int] = []
    for i, text in enumerate(texts):
        key = hashlib.blake2b(dedup_key(text).encode(), digest_size=16).digest()
        if key in first_by_key:
            exact_of[i] = first_by_key[key]
        else:
            first_by_key[key] = i
            survivors.append(i)

    hasher = MinHasher(num_perm=num_perm)
    sigs = hasher.signatures([texts[i] for i in survivors])  # (n, P)
    rows = num_perm // bands
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    near_of: dict[int, int] = {}
    keep: list[int] = []
    for pos, i in enumerate(survivors):
        sig = sigs[pos]
        band_keys = [sig[b * rows : (b + 1) * rows].tobytes() for b in range(bands)]
        match = None
        for b, key in enumerate(band_keys):
            for cand in buckets[b].get(key, ()):
                if np.mean(sigs[cand] == sig) >= threshold:
                    match = cand
                    break
            if match is not None:
                break
        if match is not None:
            near_of[i] = survivors[match]
        else:
            keep.append(i)
            for b, key in enumerate(band_keys):
                buckets[b].setdefault(key, []).append(pos)
        if progress is not None:
            progress(1)
    return DedupResult(keep=keep, exact_of=exact_of, near_of=near_of)
