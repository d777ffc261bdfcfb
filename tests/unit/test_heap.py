"""The server's allocator settings (serve/heap.py), each checked in a fresh interpreter: they change the process."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
PROBE = "from moe_experts.serve.heap import fix_mmap_threshold, malloc_trim; print(fix_mmap_threshold(), malloc_trim() is not None)"


def probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO,
                         env={**clean, "PYTHONPATH": str(REPO), **env}, timeout=60, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt and malloc_trim are glibc's")
def test_the_threshold_is_fixed_unless_the_user_set_glibc_own_variable() -> None:
    assert probe() == "1048576 True"  # held at 1 MiB, so it no longer grows as blocks are freed
    assert probe(MALLOC_MMAP_THRESHOLD_="65536") == "None True"  # glibc applied the user's value at start

