"""``moe-experts serve``: answer OpenAI-compatible HTTP requests with the routed experts."""

from __future__ import annotations

import click

from moe_experts.cli.common import load_setup


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0 picks a free one; the ready line names it).")
@click.option("--top-k", "-k", type=click.IntRange(min=2), default=2, show_default=True,
              help="Experts mixed by the model 'auto-mix' (at most the number of experts).")
@click.option("--max-bytes", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Refuse request texts larger than this many bytes (413), as `ask` does.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests decoded together (1: one at a time).")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="How long an idle server waits for a batch to fill before it starts.")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests waiting at most; more are answered 503 with Retry-After.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
              help="Seconds a request may take from arrival to its last token; then it is answered 504.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batches decoded at the same time, each for a different expert; the CPU's threads are shared "
                   "among them.")
@click.option("--stack-experts/--no-stack-experts", default=True, show_default=True,
              help="Stack the experts' weights so that requests for different experts share a batch (each row "
                   "computed with its own expert); needs same-shaped Llama experts, and holds their weights twice.")
@click.option("--no-access-log", is_flag=True, help="Do not log one line per request.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, top_k: int, max_bytes: int, max_batch_size: int,
          max_wait_ms: float, max_queue: int, timeout: float, workers: int, stack_experts: bool,
          no_access_log: bool) -> None:
    """Serve the experts over HTTP, OpenAI-compatible.

    \b
    moe-experts serve --port 8000
    curl -s localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"model": "auto", "messages": [{"role": "user", "content": "def read_lines(path):"}]}'

    Models: auto (the router's top-1 expert), auto-mix (the top-k mixture), any expert's name, and
    token-moe when a token-level MoE is built. Also GET /v1/models, POST /v1/route, GET /healthz,
    GET /metrics (Prometheus). Concurrent requests are batched. The workspace is only read; SIGHUP (or
    POST /admin/reload-router from this machine) swaps in a retrained router without dropping requests.
    """
    import os

    # Before torch loads its OpenMP runtime: threads that sleep when idle instead of spinning. A server's
    # operations are small and the event loop shares the cores; spinning OpenMP threads made a micro model's
    # forward pass 30x slower on a loaded 2-core machine (the test suite measured 75 ms against 2.5 ms).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from moe_experts.serve.heap import fix_mmap_threshold

    fix_mmap_threshold()  # before the models load: freed tensors go back to the system, resident memory stays flat
    from moe_experts.api import MoE
    from moe_experts.serve.batcher import Batching
    from moe_experts.serve.engine import Engine
    from moe_experts.serve.server import bind, run

    setup = load_setup(ctx, write=False)  # read-only: the server never writes to the workspace
    sock = bind(host, port)  # a busy port fails now, before models load
    batching = Batching(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue, timeout=timeout,
                        workers=workers, stack_experts=stack_experts)
    if workers > 1:  # each worker's operations get their share of the cores, not all of them each
        import torch

        from moe_experts.machine import usable_cores

        torch.set_num_threads(max(1, usable_cores() // workers))
    engine = Engine(MoE(setup), top_k=top_k, max_bytes=max_bytes, batching=batching)
    try:
        run(engine, sock, access_log=not no_access_log)
    finally:
        engine.close()
