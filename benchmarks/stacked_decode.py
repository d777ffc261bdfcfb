"""One batch of requests for different experts: stacked weights (one pass) against one batch per expert.

Loads a workspace's experts, takes ``--rows`` prompts from their test splits (spread over the domains, so
the rows belong to different experts), and decodes them greedily for ``--max-tokens`` tokens three ways:
all rows in one batch through ``inference.stacked`` (what ``moe-experts serve`` does by default), one batch
per expert one after another through each expert's own model (``serve --no-stack-experts``), and a single
row alone both ways (what concurrency 1 costs). It checks that the stacked batch gives every row exactly
the tokens its own expert gives it, and reports the median wall time of ``--repeats`` runs.

    python benchmarks/stacked_decode.py -w runs/tiny [--cards experts] [--rows 8] [--max-tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, sample_requests, usable_cores, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", type=Path, default=Path("runs/tiny"))
    ap.add_argument("--cards", type=Path, default=Path("experts"))
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the server's worker uses all cores "
                    "by default; 1 leaves a core to the load generator, as under load)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from moe_experts.config import load_registry
    from moe_experts.inference.batch import Row, decode_batch
    from moe_experts.inference.generate import GenerationSettings, encode_prompt, eos_ids_of, fit_context
    from moe_experts.inference.stacked import StackedExperts
    from moe_experts.modeling.checkpoints import load_checkpoint
    from moe_experts.workspace import Workspace

    torch.set_num_threads(args.threads)
    registry = load_registry(args.cards)
    ws = Workspace(args.workspace.absolute())
    names = [c.name for c in registry.cards]
    loaded = [load_checkpoint(ws.model_dir(n)) for n in names]
    models = [m.model.eval() for m in loaded]
    tokenizer = loaded[0].tokenizer
    stack = StackedExperts(models)
    n_cards = len(names)
    per = -(-args.rows // n_cards)
    texts = sample_requests(ws, registry, per * n_cards)  # card by card, ``per`` each
    which = [i % n_cards for i in range(args.rows)]  # row i: the (i // n_cards)-th prompt of card i % n_cards
    prompts = [texts[e * per + i // n_cards] for i, e in enumerate(which)]
    settings = GenerationSettings(max_new_tokens=args.max_tokens, temperature=0.0)
    max_new, budget = fit_context(models, settings.max_new_tokens)
    ids = [encode_prompt(tokenizer, p, budget)[0] for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = eos_ids_of(tokenizer, models)

    def rows(idx: list[int]) -> list[Row]:
        return [Row(ids[i], GenerationSettings(max_new_tokens=max_new, temperature=0.0)) for i in idx]

    def stacked() -> list:
        return decode_batch([stack.bind(which)], tokenizer, rows(list(range(len(ids)))), eos_ids=eos, pad_id=pad)

    def per_expert() -> dict[int, object]:
        out = {}
        for e in sorted(set(which)):
            idx = [i for i, w in enumerate(which) if w == e]
            out.update(zip(idx, decode_batch([models[e]], tokenizer, rows(idx), eos_ids=eos, pad_id=pad)))
        return out

    def one_row_own() -> list:
        return decode_batch([models[which[0]]], tokenizer, rows([0]), eos_ids=eos, pad_id=pad)

    def one_row_stacked() -> list:
        return decode_batch([stack.bind(which[:1])], tokenizer, rows([0]), eos_ids=eos, pad_id=pad)

    def timed(fn) -> tuple[float, object]:
        times, out = [], None
        for _ in range(args.repeats):
            began = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - began)
        return statistics.median(times), out

    with torch.inference_mode():
        t_stacked, out_stacked = timed(stacked)
        t_lanes, out_lanes = timed(per_expert)
        t_one, _ = timed(one_row_own)
        t_one_stacked, _ = timed(one_row_stacked)
    same = all(out_stacked[i].token_ids == g.token_ids for i, g in out_lanes.items())
    tokens = sum(g.new_tokens for g in out_stacked)
    result = {
        "benchmark": "stacked_decode", "date": dt.date.today().isoformat(), "cpu": cpu_model(),
        "cores": usable_cores(), "threads": args.threads, "torch": torch.__version__, "experts": names,
        "rows": len(ids), "experts_in_batch": len(set(which)), "max_tokens": max_new, "tokens": tokens,
        "repeats": args.repeats, "same_tokens": same,
        "seconds": {"stacked_batch": round(t_stacked, 4), "one_batch_per_expert": round(t_lanes, 4),
                    "one_row_own_model": round(t_one, 4), "one_row_stacked": round(t_one_stacked, 4)},
        "speedup_stacked_over_per_expert": round(t_lanes / t_stacked, 2),
    }
    write_result(result, args.out, f"stacked_decode-{result['date']}")
    if not same:
        sys.exit("error: the stacked batch gave some row other tokens than its own expert")


if __name__ == "__main__":
    main()
