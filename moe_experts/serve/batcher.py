"""Dynamic batching: requests that arrive together are routed together and decoded together.

A worker thread (``workers`` of them; each decodes a different lane, or a stacked batch of its own) uses
the models. Requests wait in a queue; when a worker is free it takes everything waiting, routes all of it
in one call to the document router (``/v1/route`` texts too), and sorts the generation requests into lanes
by who generates: one expert, one set of experts mixed (``auto-mix``; each request keeps its own weights),
or the token-level MoE. It then decodes the lane whose first request is oldest, up to ``max_batch_size``
requests at once (``inference.batch``: each keeps its own settings and
seed). Where the experts' weights are stacked (``stack_experts``, ``inference.stacked``), the lanes of
single experts are one lane: requests for different experts join one batch, oldest first, and one
forward pass computes each row with its own expert. When the worker was idle, it first waits up to
``max_wait_ms`` for more requests to join; under load the queue fills while a batch runs, so batches form
without waiting.

The queue holds at most ``max_queue`` requests: more are refused at once (``serve.errors.Overloaded``:
503 with ``Retry-After``). A request that has not finished ``timeout`` seconds after it was queued ends
with ``serve.errors.TimedOut`` (504), whether it was still waiting or generating; a cancelled one (the
client went away) leaves its batch at the next token. Neither disturbs the other requests in its batch.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from moe_experts.serve.errors import APIError, Overloaded, TimedOut
from moe_experts.serve.heap import malloc_trim
from moe_experts.serve.pieces import Cancelled

if TYPE_CHECKING:
    from moe_experts.serve.metrics import Metrics

logger = logging.getLogger(__name__)

ROUTE = "route"  # the kind of a /v1/route job (decisions only)
TRIM_EVERY = 10.0  # seconds between returns of freed heap memory to the system (glibc's malloc_trim)


class Backend(Protocol):
    """What the worker needs of the models (``serve.engine.Engine``)."""

    router: Any  # the live document router; read once per routing batch
    models: list[str]

    def needs_routing(self, model: str) -> bool: ...

    def plan(self, model: str, decision: Any) -> tuple[tuple[str, float], ...]: ...

    def decode(self, lane: tuple[str, ...], jobs: Sequence[Job]) -> list[Any]: ...

    def stacks(self, lane: tuple[str, ...]) -> bool: ...

    def decode_stacked(self, jobs: Sequence[Job]) -> list[Any]: ...


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 16  # requests decoded together (1: one at a time)
    max_wait_ms: float = 10.0  # how long an idle worker waits for a batch to fill
    max_queue: int = 256  # requests waiting at most; more are refused (503 + Retry-After)
    timeout: float = 120.0  # seconds a request may take from queueing to its last token
    workers: int = 1  # batches decoded at the same time (each for a different lane)
    stack_experts: bool = True  # requests for different experts in one batch, where their weights stack

    def __post_init__(self) -> None:
        for name, low in (("max_batch_size", 1), ("max_queue", 1), ("workers", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or not self.timeout > 0:
            raise ValueError(f"max_wait_ms must be >= 0 and timeout > 0, got {self.max_wait_ms}, {self.timeout}")


@dataclass(eq=False)
class Job:
    """One request in the queue: generate (``model``, ``text``, ``settings``) or route (``texts``)."""

    model: str
    text: str = ""
    name: str = ""  # for the log (the response id)
    settings: Any = None  # serve.engine.Settings
    texts: Sequence[str] = ()
    on_text: Callable[[str], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    deadline: float = math.inf
    decision: Any = None  # the routing decision, once routed
    plan: tuple[tuple[str, float], ...] = ()  # who generates, with weights
    routing_seconds: float = 0.0
    first_token: float | None = None
    started: float | None = None

    @property
    def lane(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.plan)


class Batcher:
    def __init__(self, engine: Backend, batching: Batching, metrics: Metrics) -> None:
        self.engine, self.batching, self.metrics = engine, batching, metrics
        self._cv = threading.Condition()
        self._unrouted: collections.deque[Job] = collections.deque()
        self._lanes: dict[tuple[str, ...], collections.deque[Job]] = {}
        self._busy: set[tuple[str, ...]] = set()  # lanes a worker is decoding now
        self._route_lock = threading.Lock()  # one routing call at a time
        self._stopping = False
        self._batch_seconds = collections.deque(maxlen=20)  # recent batches' wall time, for Retry-After
        self._trim = malloc_trim()
        self._trimmed = time.monotonic()
        self._threads = [threading.Thread(target=self._run, name=f"moe-experts-batcher-{i}", daemon=True)
                         for i in range(batching.workers)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ callers (any thread)
    def submit(self, job: Job) -> Future:
        with self._cv:
            queued = self._queued()
            if queued >= self.batching.max_queue:
                self.metrics.rejected.labels("queue_full").inc()
                raise Overloaded(queued, self._retry_after(queued), self.batching.max_queue)
            job.deadline = job.arrived + self.batching.timeout
            self._unrouted.append(job)
            self.metrics.queue_depth.set(queued + 1)
            self._cv.notify()
        return job.future

    def stop(self) -> None:
        """Finish what is queued, then end the workers."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=self.batching.timeout)

    def _queued(self) -> int:
        return len(self._unrouted) + sum(len(q) for q in self._lanes.values())

    def _retry_after(self, queued: int) -> int:
        per_batch = sum(self._batch_seconds) / len(self._batch_seconds) if self._batch_seconds else 1.0
        batches = queued / (self.batching.max_batch_size * self.batching.workers)
        return max(1, math.ceil(per_batch * batches))

    # ------------------------------------------------------------------ the workers
    def _free(self) -> list[tuple[str, ...]]:
        """Lanes with requests waiting that no worker is decoding (called holding the lock)."""
        return [lane for lane, q in self._lanes.items() if q and lane not in self._busy]

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._unrouted and not self._free() and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._unrouted and not self._free():
                    return
                self._wait_for_batch()
                unrouted = list(self._unrouted)
                self._unrouted.clear()
            lanes: list[tuple[str, ...]] = []
            try:
                if unrouted:
                    with self._route_lock:
                        self._route(unrouted)
                lanes, jobs = self._next_batch()
                if jobs:
                    self._decode(jobs)
            except Exception as exc:  # never let a worker die: fail what it held, keep serving
                logger.exception("the batch worker failed")
                for job in unrouted:
                    _fail(job, exc)
            finally:
                with self._cv:
                    self._busy.difference_update(lanes)
                    self._cv.notify_all()
                self._release_memory()

    def _release_memory(self) -> None:
        """Every ``TRIM_EVERY`` seconds, hand the heap's free pages back to the system. Batches of changing
        sizes and lengths leave freed memory spread over glibc's arenas, where it counts as resident although
        nothing uses it. Blocks above the mmap threshold never reach the heap (``serve.heap``, set by
        ``moe-experts serve``); this returns what the smaller ones leave."""
        if self._trim is None or time.monotonic() - self._trimmed < TRIM_EVERY:
            return
        self._trimmed = time.monotonic()
        self._trim(0)

    def _wait_for_batch(self) -> None:
        """Called holding the lock: give an idle worker's first request ``max_wait_ms`` for company."""
        waiting = [j.arrived for j in self._unrouted] + [self._lanes[lane][0].arrived for lane in self._free()]
        if not waiting:
            return
        until = min(waiting) + self.batching.max_wait_ms / 1000
        while self._queued() < self.batching.max_batch_size and not self._stopping:
            left = until - time.monotonic()
            if left <= 0:
                return
            self._cv.wait(left)

    def _route(self, jobs: list[Job]) -> None:
        """Route every job that needs a decision in one call, then queue each generation job in its lane."""
        live = [j for j in jobs if _alive(j)]
        needing = [j for j in live if j.model == ROUTE or self.engine.needs_routing(j.model)]
        texts = [t for j in needing for t in (j.texts if j.model == ROUTE else [j.text])]
        decisions: list[Any] = []
        seconds = 0.0
        if texts:
            router = self.engine.router  # read once: a reload swaps it between batches, never inside one
            try:
                decisions, seconds = router.route(texts)
            except Exception as exc:
                for j in needing:
                    _fail(j, exc)
                live = [j for j in live if j not in needing]
                needing = []
        share = seconds / max(len(texts), 1)
        at = 0
        for j in needing:
            n = len(j.texts) if j.model == ROUTE else 1
            j.routing_seconds = share * n
            self.metrics.routing.labels(_route_label(j.model, self.engine)).observe(j.routing_seconds)
            if j.model == ROUTE:
                j.future.set_result(decisions[at:at + n])
            else:
                j.decision = decisions[at]
            at += n
        with self._cv:
            for j in live:
                if j.model == ROUTE:
                    continue
                j.plan = self.engine.plan(j.model, j.decision)
                self._lanes.setdefault(j.lane, collections.deque()).append(j)
            self.metrics.queue_depth.set(self._queued())
            self._cv.notify_all()  # other workers may take the lanes this filled

    def _next_batch(self) -> tuple[list[tuple[str, ...]], list[Job]]:
        """The oldest waiting job's lane that no other worker is decoding, with up to ``max_batch_size`` of its
        jobs (expired ones failed here), and the lanes to mark busy until this worker is done with them. With
        stacked experts, the other single-expert lanes' jobs join it, oldest first, and no lane is marked busy:
        with several workers, each makes a stacked batch of what is waiting."""
        with self._cv:
            for lane, q in self._lanes.items():
                while q and not _alive(q[0]):
                    q.popleft()
            waiting = sorted((self._lanes[lane][0].arrived, lane) for lane in self._free())
            if not waiting:
                return [], []
            lanes = [waiting[0][1]]
            stacking = self.batching.stack_experts and self.engine.stacks(lanes[0])
            if stacking:
                lanes += [lane for _, lane in waiting[1:] if self.engine.stacks(lane)]
            else:
                self._busy.update(lanes)
            queues = [self._lanes[lane] for lane in lanes]
            jobs: list[Job] = []
            while len(jobs) < self.batching.max_batch_size:
                ready = [q for q in queues if q]
                if not ready:
                    break
                job = min(ready, key=lambda q: q[0].arrived).popleft()
                if _alive(job):
                    jobs.append(job)
            self.metrics.queue_depth.set(self._queued())
            return ([] if stacking else lanes), jobs

    def _decode(self, jobs: list[Job]) -> None:
        began = time.monotonic()
        for j in jobs:
            j.started = began
            self.metrics.queue_wait.labels(_route_label(j.model, self.engine)).observe(began - j.arrived)
        stacked = len({j.lane for j in jobs}) > 1
        kind = "stacked" if stacked else "mixture" if len(jobs[0].lane) > 1 else "single"
        self.metrics.batch_size.labels(kind).observe(len(jobs))
        try:
            results = self.engine.decode_stacked(jobs) if stacked else self.engine.decode(jobs[0].lane, jobs)
        except Exception as exc:
            if not isinstance(exc, APIError):
                logger.exception("decoding a batch of %d for %s failed", len(jobs),
                                 ", ".join(sorted({"+".join(j.lane) for j in jobs})))
            results = [exc] * len(jobs)
        self._batch_seconds.append(time.monotonic() - began)
        for job, result in zip(jobs, results):
            route = _route_label(job.model, self.engine)
            expert = "+".join(job.lane)
            if isinstance(result, BaseException):
                outcome = "cancelled" if isinstance(result, Cancelled) else \
                    "timeout" if isinstance(result, TimedOut) else "error"
                if outcome == "cancelled":
                    logger.info("%s: the client went away; generation stopped after %d of at most %s tokens",
                                job.name or "a request", result.tokens, job.settings.max_tokens or "the card's")
                elif outcome == "timeout":
                    logger.warning("%s: timed out after %d generated tokens", job.name or "a request", result.tokens)

                self.metrics.requests.labels(route, expert, outcome).inc()
                _fail(job, result)
                continue
            done = time.monotonic()
            self.metrics.requests.labels(route, expert, "ok").inc()
            self.metrics.latency.labels(route, expert).observe(done - job.arrived)
            if job.first_token is not None:
                self.metrics.first_token.labels(route, expert).observe(job.first_token - job.arrived)
            self.metrics.generated(route, expert, result.completion_tokens)
            job.future.set_result(result)


def watch(job: Job, streamer: Any) -> Callable[[int], bool]:
    """The per-token hook of a job's row: cancel and timeout checks, first-token time, stop strings."""

    seen = [0]

    def on_token(token: int) -> bool:
        now = time.monotonic()
        if job.first_token is None:
            job.first_token = now
        if job.cancel.is_set():
            raise Cancelled(seen[0])
        if now > job.deadline:
            raise TimedOut(seen[0])
        seen[0] += 1
        return streamer.token(token) if streamer is not None else False

    return on_token


def _alive(job: Job) -> bool:
    """False (and the job failed) when it was cancelled or ran out of time while waiting."""
    if job.cancel.is_set():
        _fail(job, Cancelled(0))
        return False
    if time.monotonic() > job.deadline:
        _fail(job, TimedOut(0))
        return False
    return True


def _fail(job: Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)


def _route_label(model: str, engine: Backend) -> str:
    return model if model == ROUTE or model in engine.models else "other"
