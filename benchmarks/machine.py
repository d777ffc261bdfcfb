"""Helpers every benchmark shares: the machine it ran on, its requests, where its result goes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_experts.machine import cpu_model, usable_cores  # noqa: E402, F401  (re-exported for the benchmarks)

RESULTS = Path(__file__).parent / "results"

# dense bf16 peak FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name()
BF16_PEAK = {"H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def measured_gemm_flops(torch: Any, n: int = 2048, seconds: float = 3.0, dtype: Any = None) -> float:
    """FLOP/s of repeated n x n matrix products on this CPU (its practical peak for this work), fp32 by default."""
    import time

    dtype = dtype or torch.float32
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.matmul(a, b)
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - started)


def sample_requests(ws: Any, registry: Any, n: int, *, chars: int = 400, salt: str = "bench-latency") -> list[str]:
    """``n`` requests spread evenly over the domains: the first ``chars`` characters of test documents (hash order)."""
    from moe_experts.data.build import iter_documents
    from moe_experts.data.split import unit_hash

    per_domain = max(1, n // len(registry.cards))
    out = []
    for card in registry.cards:
        docs = sorted(iter_documents(ws, card.domain, "test"), key=lambda d: unit_hash(d.text, salt))
        out += [d.text[:chars] for d in docs[:per_domain]]
    return out


def write_result(result: dict[str, Any], out: Path | None, stem: str, *, shown: dict[str, Any] | None = None) -> Path:
    """Print the result (or ``shown``), write it to ``out`` or results/<stem>.json; the path written."""
    print(json.dumps(result if shown is None else shown, indent=1))
    path = out or RESULTS / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written: {path}")
    return path
