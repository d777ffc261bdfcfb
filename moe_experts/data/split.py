"""Deterministic train / val / test assignment by content hash.

A document's split depends only on its own (case- and whitespace-folded) text,
never on the order or the other documents, so rebuilding a corpus with more
sources never moves an existing document across splits; and since duplicates
are removed before splitting, no text (nor a near copy) is in two splits.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from moe_experts.data.clean import dedup_key

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


def unit_hash(text: str, salt: str) -> float:
    """A uniform number in [0, 1) derived from the folded text and a salt."""
    digest = hashlib.sha256(f"{salt}\x00{dedup_key(text)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(text: str, val_fraction: float, test_fraction: float) -> Split:
    u = unit_hash(text, "split")
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def doc_id(text: str) -> str:
    """A stable id for a document: the first 16 hex digits of its folded text's hash."""
    return hashlib.sha256(dedup_key(text).encode()).hexdigest()[:16]
