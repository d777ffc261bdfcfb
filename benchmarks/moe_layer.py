"""MoE layer cost: top-k of E experts against the dense FFN of the same width, forward + backward.

Target (token-level router issue): on a GPU in bf16, a Mixtral MoE block with
top-2 of 4 experts costs at most 3.0x the dense SwiGLU FFN of the same width on
the same tokens (2.0x is the FLOP ideal; a naive per-expert loop measures 5-6x
on an H100). The experts implementations of the installed transformers are
timed with the gate included, as the model runs them: ``eager`` (a Python loop
over experts) and ``grouped_mm`` (one grouped GEMM per projection; transformers
5's default); ``batched_mm`` only on request (--impls), as it copies the expert
weights for every token.

    python benchmarks/moe_layer.py                       # GPU: bf16, 16,384 tokens, d 1024, ffn 2816
    python benchmarks/moe_layer.py --tokens 2048 --hidden 256 --ffn 704   # a CPU smoke run

Results go to results/moe_layer-<date>-<device>.json; record GPU runs in RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, usable_cores, write_result  # noqa: E402


def timed(fn, device, repeats: int, warmup: int) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(1000 * (time.perf_counter() - started))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    # batched_mm gathers a copy of the expert weights for every token (memory ~ tokens x k x 3 x d x ffn): meant for
    # decoding a few tokens; at 2,048 training tokens on CPU it took 41 s against 0.26 s for grouped_mm
    ap.add_argument("--impls", default="eager,grouped_mm", help="experts implementations to time (comma-separated)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers
    from transformers import LlamaConfig, MixtralConfig
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaMLP
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    x = torch.randn(1, args.tokens, args.hidden, device=device, dtype=dtype)
    dense = LlamaMLP(LlamaConfig(hidden_size=args.hidden, intermediate_size=args.ffn)).to(device, dtype)

    def step(module):
        def run():
            inp = x.detach().requires_grad_(True)
            module(inp).float().square().mean().backward()
        return run

    rows = {"dense": timed(step(dense), device, args.repeats, args.warmup)}
    known = {"eager", *ALL_EXPERTS_FUNCTIONS.keys()}
    for impl in args.impls.split(","):
        if impl not in known:
            raise SystemExit(f"--impls: unknown experts implementation {impl!r}; this transformers has {sorted(known)}")
        cfg = MixtralConfig(hidden_size=args.hidden, intermediate_size=args.ffn, num_local_experts=args.experts,
                            num_experts_per_tok=args.top_k)
        cfg._experts_implementation = impl
        block = MixtralSparseMoeBlock(cfg).to(device, dtype)
        for p in block.parameters():
            torch.nn.init.normal_(p, std=0.02)
        try:
            rows[impl] = timed(step(block), device, args.repeats, args.warmup)
        except Exception as exc:  # an implementation this stack cannot run: say so, keep the others
            print(f"{impl}: not available here ({type(exc).__name__}: {str(exc)[:120]})")
    base = float(np.median(rows["dense"]))
    result = {
        "benchmark": "moe_layer",
        "date": dt.date.today().isoformat(),
        "machine": {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_model(),
                    "cores": usable_cores(), "torch": torch.__version__, "transformers": transformers.__version__},
        "settings": {**vars(args), "dtype": str(dtype).replace("torch.", ""), "out": None},
        "forward_backward_ms": {k: {"p50": round(float(np.median(v)), 3), "p90": round(float(np.percentile(v, 90)), 3)}
                                for k, v in rows.items()},
        "ratio_to_dense_p50": {k: round(float(np.median(v)) / base, 3) for k, v in rows.items() if k != "dense"},
        "flop_ideal_ratio": args.top_k,
    }
    write_result(result, args.out, f"moe_layer-{result['date']}-{device.type}")


if __name__ == "__main__":
    main()
