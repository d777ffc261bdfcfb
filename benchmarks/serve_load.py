"""`moe-experts serve` under load, on loopback only: throughput, latency, time to first token, memory.

Starts the server (the CLI, as users start it) on 127.0.0.1 with a free port, then for each concurrency level
keeps that many streaming clients busy (each sends its next request when the last one ends) until
``--requests`` requests are answered. Per level: requests/s, generated tokens/s, p50 and p99 latency and
time to first token (the first chunk with text), failed requests, and, from the server's /metrics, the
server-side latency and the share of it spent routing. The same levels run against a server that answers
one request at a time (``--max-batch-size 1``) on the same prompts, the baseline batching is measured
against. Then a soak: ``--soak`` more requests at the highest concurrency, with the server's resident
memory (VmRSS) read after warm-up and at the end.

Prompts are the first 400 characters of test-split documents, spread evenly over the domains. Every request
asks for ``--max-tokens`` tokens at temperature 0.7 with its own seed, as a chat completion to ``auto``.

Targets (issue 15), on 2 CPU cores with the tiny experts:
- throughput at concurrency 8 at least 3x concurrency 1;
- zero failed requests;
- resident memory after the soak at most 5% above its value after warm-up;
- routing at most 10% of the server-side latency at concurrency 1.

    python benchmarks/serve_load.py -w runs/tiny [--cards experts] [--levels 1 8 32] [--requests 96] [--soak 10000]
        [--workers 1] [--no-baseline] [--no-stack-experts]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, sample_requests, usable_cores, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = 1000  # soak requests between two readings of resident memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", default="runs/tiny")
    ap.add_argument("--cards", default="experts")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=96, help="requests answered per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--soak", type=int, default=10_000, help="requests in the memory soak (0: none)")
    ap.add_argument("--soak-max-tokens", type=int, default=8)
    ap.add_argument("--warm-up", type=int, default=500, help="soak requests before the first memory reading")
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="the batched server's --workers")
    ap.add_argument("--no-baseline", action="store_true", help="skip the one-at-a-time server")
    ap.add_argument("--no-stack-experts", action="store_true",
                    help="the batched server batches each expert's requests apart (serve --no-stack-experts)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from moe_experts.config import load_preset, load_registry
    from moe_experts.workspace import Workspace, read_json

    ws = Workspace(Path(args.workspace).absolute())
    preset = read_json(ws.root / "workspace.json")["preset"]
    registry = load_registry(Path(args.cards))
    load_preset(preset)
    prompts = sample_requests(ws, registry, max(args.requests, 200))
    result: dict[str, Any] = {
        "benchmark": "serve_load", "date": dt.date.today().isoformat(), "cpu": cpu_model(),
        "cores": usable_cores(), "preset": preset, "experts": registry.names, "prompts": len(prompts),
        "max_tokens": args.max_tokens, "requests_per_level": args.requests,
        "batched": {"max_batch_size": args.max_batch_size, "workers": args.workers,
                    "stack_experts": not args.no_stack_experts},
    }
    batched = Server(ws.root, args.cards, preset, args.max_batch_size, args.workers, stack=not args.no_stack_experts)
    try:
        result["batched"]["levels"] = [batched.level(c, args.requests, prompts, args.max_tokens) for c in args.levels]
        if args.soak:
            result["soak"] = batched.soak(max(args.levels), args.soak, args.warm_up, prompts, args.soak_max_tokens)
    finally:
        batched.stop()
    if not args.no_baseline:
        single = Server(ws.root, args.cards, preset, 1, 1)
        try:
            result["one_at_a_time"] = {"max_batch_size": 1, "levels": [
                single.level(c, args.requests, prompts, args.max_tokens) for c in args.levels]}
        finally:
            single.stop()
    result["targets"] = targets(result)
    stem = f"serve_load-{result['date']}-{preset}-workers{args.workers}{'-unstacked' if args.no_stack_experts else ''}"
    write_result(result, args.out, stem)


class Server:
    """`moe-experts serve` in a subprocess; its URL, pid, /metrics and resident memory."""

    def __init__(self, root: Path, cards: str, preset: str, max_batch_size: int, workers: int, *,
                 stack: bool = True) -> None:
        self.log = Path(f"/tmp/serve_load-{os.getpid()}-{max_batch_size}-{workers}.log")
        cmd = [sys.executable, "-m", "moe_experts", "--preset", preset, "--cards", cards, "-w", str(root), "serve",
               "--host", "127.0.0.1", "--port", "0", "--no-access-log", "--max-batch-size", str(max_batch_size),
               "--max-queue", "4096", "--timeout", "600", "--workers", str(workers),
               "--stack-experts" if stack else "--no-stack-experts"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "MOE_EXPERTS_NO_PROGRESS": "1"}
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        began, self.url = time.monotonic(), ""
        while not self.url:
            if self.proc.poll() is not None or time.monotonic() - began > 600:
                raise SystemExit(f"the server did not start:\n{self.log.read_text(errors='replace')}")
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("ready: "):
                    self.url = line.split()[1].removesuffix("/v1")
            time.sleep(0.2)
        self.start_seconds = time.monotonic() - began
        print(f"server (max batch {max_batch_size}, {workers} workers, {'stacked' if stack else 'lane per expert'}) "
              f"ready at {self.url} in "
              f"{self.start_seconds:.1f} s", flush=True)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def metrics(self) -> dict[str, float]:
        import httpx

        text = httpx.get(self.url + "/metrics", timeout=60).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def level(self, concurrency: int, n: int, prompts: list[str], max_tokens: int) -> dict[str, Any]:
        asyncio.run(load(self.url, concurrency, concurrency, prompts, max_tokens))  # warm: connections, batch sizes
        before = self.metrics()
        began = time.perf_counter()
        rows = asyncio.run(load(self.url, concurrency, n, prompts, max_tokens))
        wall = time.perf_counter() - began
        after = self.metrics()
        out = summarise(rows, wall, concurrency)
        out.update(server_side(before, after))
        print(json.dumps(out), flush=True)
        return out

    def soak(self, concurrency: int, n: int, warm_up: int, prompts: list[str], max_tokens: int) -> dict[str, Any]:
        """``n`` requests after ``warm_up`` ones, resident memory read after warm-up and every ``SAMPLE`` requests."""
        asyncio.run(load(self.url, concurrency, warm_up, prompts, max_tokens))
        series = [round(self.rss_mib(), 1)]
        rows: list[dict[str, Any]] = []
        began = time.perf_counter()
        for start in range(0, n, SAMPLE):
            rows += asyncio.run(load(self.url, concurrency, min(SAMPLE, n - start), prompts, max_tokens))
            series.append(round(self.rss_mib(), 1))
        wall = time.perf_counter() - began
        out = summarise(rows, wall, concurrency)
        first, last = float(np.median(series[:3])), float(np.median(series[-3:]))
        out.update({"max_tokens": max_tokens, "warm_up_requests": warm_up, "rss_mib_after_warm_up": series[0],
                    "rss_mib_after": series[-1], "rss_growth_pct": round(100 * (series[-1] / series[0] - 1), 2),
                    "rss_mib_max": max(series), "rss_sample_every": SAMPLE, "rss_mib_series": series,
                    # the allocator's sawtooth moves single readings by a few percent: medians of three as well
                    "rss_growth_pct_medians": round(100 * (last / first - 1), 2)})
        print(json.dumps({k: v for k, v in out.items() if k != "rss_mib_series"}), flush=True)
        return out


async def load(url: str, concurrency: int, n: int, prompts: list[str], max_tokens: int) -> list[dict[str, Any]]:
    """``concurrency`` clients in a closed loop until ``n`` requests are answered; one row per request."""
    import httpx

    rows: list[dict[str, Any]] = []
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker() -> None:
            for i in counter:
                rows.append(await one(client, i, prompts[i % len(prompts)], max_tokens))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return rows


async def one(client: Any, i: int, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.7, "seed": i, "stream": True, "stream_options": {"include_usage": True}}
    began = time.perf_counter()
    first, tokens, error = None, 0, None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        error = data["error"]["message"]
                    elif data.get("usage"):
                        tokens = data["usage"]["completion_tokens"]
                    elif first is None and data["choices"] and data["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - began
    except Exception as exc:  # a failed request is counted, not fatal
        error = f"{type(exc).__name__}: {exc}"
    return {"seconds": time.perf_counter() - began, "ttft": first, "tokens": tokens, "error": error}


def summarise(rows: list[dict[str, Any]], wall: float, concurrency: int) -> dict[str, Any]:
    ok = [r for r in rows if r["error"] is None]
    lat = np.array([r["seconds"] for r in ok]) * 1000
    ttft = np.array([r["ttft"] for r in ok if r["ttft"] is not None]) * 1000
    errors = [r["error"] for r in rows if r["error"] is not None]
    return {
        "concurrency": concurrency, "requests": len(rows), "failed": len(errors), "first_errors": errors[:3],
        "seconds": round(wall, 2), "requests_per_s": round(len(ok) / wall, 2),
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "ttft_ms_p50": round(float(np.percentile(ttft, 50)), 1) if len(ttft) else None,
        "ttft_ms_p99": round(float(np.percentile(ttft, 99)), 1) if len(ttft) else None,
    }


def server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """From /metrics: mean server-side latency, the share of it spent routing, and the mean batch size."""
    def total(name: str) -> float:
        return sum(v - before.get(k, 0.0) for k, v in after.items() if k.split("{")[0] == name)

    latency_sum, latency_n = total("moe_experts_request_duration_seconds_sum"), \
        total("moe_experts_request_duration_seconds_count")
    routing_sum = total("moe_experts_routing_seconds_sum")
    batch_sum, batch_n = total("moe_experts_batch_size_sum"), total("moe_experts_batch_size_count")
    return {
        "server_latency_ms_mean": round(1000 * latency_sum / latency_n, 1) if latency_n else None,
        "routing_ms_mean": round(1000 * routing_sum / latency_n, 2) if latency_n else None,
        "routing_share_pct": round(100 * routing_sum / latency_sum, 2) if latency_sum else None,
        "mean_batch_size": round(batch_sum / batch_n, 2) if batch_n else None,
    }


def targets(result: dict[str, Any]) -> dict[str, Any]:
    levels = {lv["concurrency"]: lv for lv in result["batched"]["levels"]}
    out: dict[str, Any] = {}
    if 1 in levels and 8 in levels:
        ratio = levels[8]["requests_per_s"] / levels[1]["requests_per_s"]
        out["throughput_c8_over_c1"] = {"value": round(ratio, 2), "target": ">= 3", "met": ratio >= 3}
    failed = sum(lv["failed"] for lv in levels.values()) + result.get("soak", {}).get("failed", 0)
    out["failed_requests"] = {"value": failed, "target": "0", "met": failed == 0}
    if "soak" in result:
        growth = result["soak"]["rss_growth_pct"]
        out["memory_growth_pct"] = {"value": growth, "target": "<= 5", "met": growth <= 5}
    if 1 in levels and levels[1]["routing_share_pct"] is not None:
        share = levels[1]["routing_share_pct"]
        out["routing_share_pct_c1"] = {"value": share, "target": "<= 10", "met": share <= 10}
    if "one_at_a_time" in result:
        single = {lv["concurrency"]: lv for lv in result["one_at_a_time"]["levels"]}
        out["batched_over_one_at_a_time"] = {c: round(levels[c]["requests_per_s"] / single[c]["requests_per_s"], 2)
                                             for c in levels if c in single and single[c]["requests_per_s"]}
    return out


if __name__ == "__main__":
    main()
