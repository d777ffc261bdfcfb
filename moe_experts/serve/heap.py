"""How the server's process keeps its resident memory flat: glibc's allocator, told not to hoard.

A server decodes batches of changing sizes and lengths, and routes with MiniLM, whose attention scores for a
batch of windows take tens of MiB; so the tensors it frees come in ever-changing sizes. glibc raises its mmap
threshold each time a large mmapped block is freed (up to 32 MiB on 64-bit), after which such blocks come from
the heap, and the holes they leave count as resident although nothing uses them: in a soak of 10,000 requests
on the five ``tiny`` experts the server's resident memory rose 7.5% while Python's objects stayed steady. A
fixed threshold keeps every block above it in a mapping of its own, handed back to the system when freed.
Measured (``benchmarks/RESULTS.md``), growth over the same soak and requests/s:

- glibc's default: +7.5%, 34.9 requests/s (28.6-31.9 in other runs of that day);
- 128 KiB (glibc's starting value, which also fixes the trim threshold at 128 KiB): +0.4%, 25.9 requests/s;
- 1 MiB with a 64 MiB trim threshold (what ``fix_mmap_threshold`` sets; the server's periodic ``malloc_trim``
  returns the heap's top): +3.1%, 30.3 requests/s.

Both helpers do nothing on a C library without these calls (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 1024 * 1024  # bytes, held fixed
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc's variable: when the user set it, it wins
_M_MMAP_THRESHOLD = -3  # mallopt's parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
TRIM_THRESHOLD = 64 * 1024 * 1024  # fixing the mmap threshold fixes this one too, at 128 KiB: sbrk churn on every free


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> int | None:
    """Hold glibc's mmap threshold at ``threshold`` bytes (call before the models load); the value set, or None.

    None when the environment already sets ``MALLOC_MMAP_THRESHOLD_`` (glibc applied it at start) or the
    C library has no ``mallopt``."""
    if os.environ.get(MMAP_THRESHOLD_ENV):
        return None
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None or mallopt(_M_MMAP_THRESHOLD, int(threshold)) != 1:
        return None
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)  # the heap's top is handed back by the server's periodic malloc_trim
    logger.debug("malloc: blocks of %d bytes and more are mmapped, and returned when freed", threshold)
    return int(threshold)


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on a C library without it."""
    return getattr(_libc(), "malloc_trim", None)
