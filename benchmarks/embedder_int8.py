"""Can int8 dynamic quantisation of the embedder cut routing cost? Speed and agreement.

Issue 3 asks routing to cost at most 2% of generating 64 tokens; with the fp32
embedder it costs about 13% (see RESULTS.md). This measures the cheapest lever
that needs no new dependency: ``torch.ao.quantization.quantize_dynamic`` on the
embedder's Linear layers (int8 weights, per-tensor scales), used for the query
only, against the fp32 index the router was built with.

For the same requests as ``routing_latency.py`` (first 400 characters of test
documents, 50 a domain): the embedding time of fp32 and int8, one request at a
time on 2 threads (p50 / p99), the cosine between the int8 and fp32 vectors,
and how many routing decisions change.

    python benchmarks/embedder_int8.py -w runs/tiny [--requests 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, sample_requests, usable_cores, write_result  # noqa: E402
from moe_experts.config import load_registry  # noqa: E402
from moe_experts.routing.doc_router import DocRouter, router_dir  # noqa: E402
from moe_experts.workspace import Workspace  # noqa: E402


def timed_embed(embedder, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (N, D), milliseconds per request (N,)), one request at a time."""
    embedder.embed(texts[:2])  # warm up
    vecs, ms = [], []
    for text in texts:
        started = time.perf_counter()
        vecs.append(embedder.embed([text])[0])
        ms.append(1000 * (time.perf_counter() - started))
    return np.stack(vecs), np.asarray(ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", default="runs/tiny")
    ap.add_argument("--cards", default="experts")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    ws = Workspace(Path(args.workspace).absolute())
    registry = load_registry(Path(args.cards))
    router = DocRouter.load(router_dir(ws.root), registry)
    texts = sample_requests(ws, registry, args.requests)

    fp32 = router.embedder
    int8 = copy.copy(fp32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch points at torchao for new code; the eager API still works
        int8.model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32.model), {torch.nn.Linear}, dtype=torch.qint8)

    v32, ms32 = timed_embed(fp32, texts)
    v8, ms8 = timed_embed(int8, texts)
    cos = (v32 * v8).sum(axis=1)
    p32, _, _ = router.posteriors(v32, texts)
    p8, _, _ = router.posteriors(v8, texts)
    changed = int((p32.argmax(1) != p8.argmax(1)).sum())

    def pct(a: np.ndarray) -> dict[str, float]:
        return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3)}

    result = {
        "benchmark": "embedder_int8",
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": usable_cores(), "torch_threads": args.threads,
                    "torch": torch.__version__},
        "requests": len(texts),
        "embed_fp32_ms": pct(ms32),
        "embed_int8_ms": pct(ms8),
        "speedup_p50": round(float(np.percentile(ms32, 50) / np.percentile(ms8, 50)), 3),
        "cosine_int8_vs_fp32": {"min": round(float(cos.min()), 4), "median": round(float(np.median(cos)), 4)},
        "decisions_changed": changed,
    }
    write_result(result, args.out, f"embedder_int8-{result['date']}")


if __name__ == "__main__":
    main()
