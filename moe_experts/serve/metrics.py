"""``GET /metrics``: what the server did, in Prometheus' text format (``prometheus_client``).

Per route (the request's ``model``: auto, auto-mix, an expert's name, token-moe) and per expert (who
generated; ``law+medicine`` for a mixture, ``token-moe`` for the token-level MoE): requests by outcome,
server-side latency, time to first token, queue wait, routing time and generated tokens. Per HTTP
endpoint: requests by status (every 4xx and 5xx is an error the client saw) and latency. Gauges: the
queue's depth, generated tokens per second over the last minute, and the live router's version. Every
label takes values from a fixed set (unknown paths are ``other``), so the series do not grow with traffic.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ROUTING = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128)
RATE_WINDOW = 60.0  # seconds that tokens/s is averaged over
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/route", "/v1/models", "/healthz", "/metrics",
             "/admin/reload-router")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.http_requests = Counter("moe_experts_http_requests", "HTTP requests answered, by endpoint and status",
                                     ["endpoint", "status"], registry=r)
        self.http_seconds = Histogram("moe_experts_http_request_duration_seconds",
                                      "HTTP request latency until the response ends (a stream's last chunk)",
                                      ["endpoint"], buckets=LATENCY, registry=r)
        self.requests = Counter("moe_experts_requests", "Generation requests finished, by route, expert and outcome "
                                "(ok, cancelled, timeout, error)", ["route", "expert", "outcome"], registry=r)
        self.latency = Histogram("moe_experts_request_duration_seconds", "Server-side latency of a generation "
                                 "request, from queueing to its last token", ["route", "expert"], buckets=LATENCY,
                                 registry=r)
        self.first_token = Histogram("moe_experts_time_to_first_token_seconds", "From queueing to the first "
                                     "generated token", ["route", "expert"], buckets=LATENCY, registry=r)
        self.queue_wait = Histogram("moe_experts_queue_wait_seconds", "From queueing to the start of the request's "
                                    "batch", ["route"], buckets=LATENCY, registry=r)
        self.routing = Histogram("moe_experts_routing_seconds", "A request's share of its routing batch",
                                 ["route"], buckets=ROUTING, registry=r)
        self.tokens = Counter("moe_experts_generated_tokens", "Tokens generated", ["route", "expert"], registry=r)
        self.batch_size = Histogram("moe_experts_batch_size", "Requests decoded together, per batch", ["kind"],
                                    buckets=BATCH, registry=r)
        self.rejected = Counter("moe_experts_rejected_requests", "Requests refused before queueing, by reason "
                                "(queue_full)", ["reason"], registry=r)
        self.reloads = Counter("moe_experts_router_reloads", "Router reloads, by result", ["result"], registry=r)
        self.queue_depth = Gauge("moe_experts_queue_depth", "Requests waiting for a batch", registry=r)
        self.router_version = Gauge("moe_experts_router_info", "The live document router (1 for its version)",
                                    ["version"], registry=r)
        rate = Gauge("moe_experts_tokens_per_second", f"Tokens generated per second over the last {RATE_WINDOW:.0f} s",
                     registry=r)
        rate.set_function(self.tokens_per_second)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()
        self._started = time.monotonic()

    def generated(self, route: str, expert: str, tokens: int) -> None:
        self.tokens.labels(route, expert).inc(tokens)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, tokens))
            self._trim(now)

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            total = sum(n for _, n in self._recent)
        return total / min(RATE_WINDOW, max(now - self._started, 1e-9))

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()

    def set_router(self, version: str) -> None:
        self.router_version.clear()
        self.router_version.labels(version).set(1)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI (streams pass through untouched): counts every HTTP response by endpoint and status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, status = time.perf_counter(), [500]

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.http_requests.labels(endpoint, str(status[0])).inc()
            self.metrics.http_seconds.labels(endpoint).observe(time.perf_counter() - began)
