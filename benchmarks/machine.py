"""Helpers every benchmark shares: the machine it ran on, its requests, where its result goes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_experts.machine import cpu_model, usable_cores  # noqa: E402, F401  (re-exported for the benchmarks)

RESULTS = Path(__file__).parent / "results"


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
