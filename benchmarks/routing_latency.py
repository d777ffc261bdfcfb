"""What routing costs next to generating: one request at a time, on 2 CPU threads.

Target (issue 3): routing one request (embed + FAISS search + classifier) costs
at most 2% of generating 64 tokens with the chosen tiny expert; median over 200
requests, p50 and p99 of both reported.

Requests are the first 400 characters of test-split documents, 50 per domain
(sampled by hash). Generation is greedy and forced to exactly 64 new tokens
(min_new_tokens = max_new_tokens = 64) so every request does the same work.

    python benchmarks/routing_latency.py -w runs/tiny [--requests 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, sample_requests, usable_cores, write_result  # noqa: E402
from moe_experts.config import load_preset, load_registry  # noqa: E402
from moe_experts.inference.ask import ExpertPool  # noqa: E402
from moe_experts.modeling.stages import Setup  # noqa: E402
from moe_experts.routing.doc_router import DocRouter, router_dir  # noqa: E402
from moe_experts.workspace import Workspace, read_json  # noqa: E402

NEW_TOKENS = 64


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
    preset = load_preset(read_json(ws.root / "workspace.json")["preset"])
    setup = Setup(workspace=ws, registry=load_registry(Path(args.cards)), preset=preset)
    router = DocRouter.load(router_dir(ws.root), setup.registry)
    router.warm_up()
    pool = ExpertPool(setup)

    requests = sample_requests(ws, setup.registry, args.requests)

    for name in setup.registry.names:  # load every expert before timing
        pool.get(name)
    route_ms, gen_ms = [], []
    for text in requests:
        (decision,), seconds = router.route([text])
        route_ms.append(1000 * seconds)
        loaded = pool.get(decision.expert)
        ids = loaded.tokenizer(text, return_tensors="pt").input_ids
        ctx = loaded.model.config.max_position_embeddings
        ids = ids[:, -(ctx - NEW_TOKENS):]  # room for 64 new tokens in the tiny model's context
        started = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS,
                                        pad_token_id=loaded.tokenizer.pad_token_id)
        gen_ms.append(1000 * (time.perf_counter() - started))
        assert out.shape[1] - ids.shape[1] == NEW_TOKENS

    r, g = np.asarray(route_ms), np.asarray(gen_ms)
    result = {
        "benchmark": "routing_latency",
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": usable_cores(), "torch_threads": args.threads},
        "workspace": str(ws.root),
        "requests": len(requests),
        "index": router.index.info.to_json(),
        "routing_ms": {"p50": round(float(np.percentile(r, 50)), 3), "p99": round(float(np.percentile(r, 99)), 3)},
        "generate_64_ms": {"p50": round(float(np.percentile(g, 50)), 3), "p99": round(float(np.percentile(g, 99)), 3)},
    }
    result["routing_share_of_generation_p50"] = round(result["routing_ms"]["p50"] / result["generate_64_ms"]["p50"], 5)
    write_result(result, args.out, f"routing_latency-{result['date']}")


if __name__ == "__main__":
    main()
