"""The server's batch worker (``serve.batcher``) against a fake backend whose decoding the test controls."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from moe_experts.serve.batcher import ROUTE, Batcher, Batching, Job, watch
from moe_experts.serve.errors import Overloaded, TimedOut
from moe_experts.serve.metrics import Metrics
from moe_experts.serve.pieces import Cancelled


class Router:
    def __init__(self, name: str = "r1") -> None:
        self.name, self.calls = name, []

    def route(self, texts):
        self.calls.append(list(texts))
        # the text names the expert it should go to
        return [SimpleNamespace(expert=t.split()[0], abstained=False, router=self.name) for t in texts], 0.001


class Backend:
    """Decodes by answering each job's text; ``gate`` (when given) holds every batch (or those of the ``gated``
    lanes) until the test opens it."""

    models = ["auto", "law", "code", "token-moe"]

    def __init__(self, gate: threading.Event | None = None, gated: set | None = None, stacked: set = frozenset()) -> None:
        self.router = Router()
        self.gate, self.gated, self.stacked = gate, gated, stacked
        self.batches: list[tuple[tuple[str, ...], list[str]]] = []
        self.started = threading.Event()

    def needs_routing(self, model):
        return model != "token-moe"

    def plan(self, model, decision):
        if model == "token-moe":
            return (("token-moe", 1.0),)
        return ((model if model != "auto" else decision.expert, 1.0),)

    def stacks(self, lane):
        return len(lane) == 1 and lane[0] in self.stacked

    def decode_stacked(self, jobs):
        assert all(self.stacks(j.lane) for j in jobs)
        return self.decode("stacked", jobs)

    def decode(self, lane, jobs):
        self.batches.append((lane, [j.text for j in jobs]))
        self.started.set()
        if self.gate is not None and (self.gated is None or lane in self.gated):
            assert self.gate.wait(10)
        out = []
        for j in jobs:
            try:
                for token in range(3):
                    if watch(j, None)(token):
                        break
            except (Cancelled, TimedOut) as exc:
                out.append(exc)
                continue
            out.append(SimpleNamespace(text=f"answer to {j.text}", completion_tokens=3,
                                       router=getattr(j.decision, "router", None)))
        return out


def _job(model: str, text: str = "", **kw) -> Job:
    return Job(model=model, text=text, settings=SimpleNamespace(max_tokens=3), **kw)


@pytest.fixture
def gated():
    gate = threading.Event()
    backend = Backend(gate)
    batcher = Batcher(backend, Batching(max_batch_size=4, max_wait_ms=0, max_queue=6, timeout=30), Metrics())
    yield backend, batcher, gate
    gate.set()
    batcher.stop()


def test_requests_that_wait_together_are_routed_in_one_call_and_decoded_by_lane(gated):
    backend, batcher, gate = gated
    first = batcher.submit(_job("law", "law hold"))
    assert backend.started.wait(10)  # the worker is busy with the first batch; the rest queue up behind it
    texts = ["law a", "code b", "law c", "law d", "code e"]
    futures = [batcher.submit(_job("auto", t)) for t in texts]
    gate.set()
    assert [f.result(10).text for f in futures] == [f"answer to {t}" for t in texts]
    assert first.result(10).text == "answer to law hold"
    assert backend.router.calls == [["law hold"], texts]  # routing is batched across requests
    # The oldest waiting request's lane goes first, up to max_batch_size requests of that lane at once.
    assert backend.batches[1:] == [(("law",), ["law a", "law c", "law d"]), (("code",), ["code b", "code e"])]


@pytest.mark.parametrize("stack", [True, False])
def test_stacked_experts_share_a_batch_oldest_first_and_other_lanes_keep_their_own(stack):
    """Where the backend stacks law and code, their requests join one batch in arrival order (up to the cap);
    token-moe is never stacked; with stacking off, every lane decodes alone."""
    gate = threading.Event()
    backend = Backend(gate, stacked={"law", "code"})
    batcher = Batcher(backend, Batching(max_batch_size=4, max_wait_ms=0, max_queue=10, timeout=30,
                                        stack_experts=stack), Metrics())
    first = batcher.submit(_job("law", "law hold"))
    assert backend.started.wait(10)
    texts = ["code a", "law b", "token c", "code d", "law e", "code f"]
    futures = [batcher.submit(_job("token-moe" if t.startswith("token") else "auto", t)) for t in texts]
    gate.set()
    assert [f.result(10).text for f in futures] == [f"answer to {t}" for t in texts]
    assert first.result(10).text == "answer to law hold"
    batcher.stop()
    if stack:
        assert backend.batches[1:] == [("stacked", ["code a", "law b", "code d", "law e"]),
                                       (("token-moe",), ["token c"]), (("code",), ["code f"])]
    else:
        assert backend.batches[1:] == [(("code",), ["code a", "code d", "code f"]), (("law",), ["law b", "law e"]),
                                       (("token-moe",), ["token c"])]


def test_the_batch_size_is_capped_and_one_at_a_time_is_possible():
    backend = Backend()
    batcher = Batcher(backend, Batching(max_batch_size=1, max_wait_ms=50, max_queue=10, timeout=30), Metrics())
    futures = [batcher.submit(_job("law", f"law {i}")) for i in range(4)]
    assert all(f.result(10) for f in futures)
    batcher.stop()
    assert [len(texts) for _, texts in backend.batches] == [1, 1, 1, 1]


def test_an_idle_worker_waits_max_wait_for_a_batch_to_fill():
    backend = Backend()
    batcher = Batcher(backend, Batching(max_batch_size=8, max_wait_ms=400, max_queue=10, timeout=30), Metrics())
    a = batcher.submit(_job("code", "code 1"))
    time.sleep(0.05)
    b = batcher.submit(_job("code", "code 2"))
    a.result(10), b.result(10)
    batcher.stop()
    assert backend.batches == [(("code",), ["code 1", "code 2"])]


def test_a_full_queue_refuses_with_a_retry_after(gated):
    backend, batcher, gate = gated
    batcher.submit(_job("law", "law hold"))
    assert backend.started.wait(10)
    queued = [batcher.submit(_job("law", f"law {i}")) for i in range(6)]
    with pytest.raises(Overloaded) as caught:
        batcher.submit(_job("law", "law one too many"))
    err = caught.value
    assert err.status == 503 and err.headers["Retry-After"] == str(err.retry_after) and err.retry_after >= 1
    assert "--max-queue 6" in err.message
    gate.set()
    assert all(f.result(10) for f in queued)  # the refusal did not disturb what was queued


def test_a_request_that_outlives_its_timeout_is_failed_and_never_decoded():
    gate = threading.Event()
    backend = Backend(gate)
    batcher = Batcher(backend, Batching(max_batch_size=1, max_wait_ms=0, max_queue=10, timeout=0.3), Metrics())
    batcher.submit(_job("law", "law hold"))
    assert backend.started.wait(10)
    late = batcher.submit(_job("law", "law late"))
    time.sleep(0.5)
    gate.set()
    with pytest.raises(TimedOut):
        late.result(10)
    batcher.stop()
    assert [texts for _, texts in backend.batches] == [["law hold"]]


def test_a_cancelled_request_leaves_without_being_decoded(gated):
    backend, batcher, gate = gated
    batcher.submit(_job("law", "law hold"))
    assert backend.started.wait(10)
    gone = _job("law", "law gone")
    stays = batcher.submit(_job("law", "law stays"))
    future = batcher.submit(gone)
    gone.cancel.set()
    gate.set()
    with pytest.raises(Cancelled):
        future.result(10)
    assert stays.result(10).text == "answer to law stays"
    assert all("law gone" not in texts for _, texts in backend.batches)


def test_route_only_jobs_share_the_routing_call_and_token_moe_is_not_routed(gated):
    backend, batcher, gate = gated
    batcher.submit(_job("law", "law hold"))
    assert backend.started.wait(10)
    route = batcher.submit(Job(model=ROUTE, texts=["code x", "law y"]))
    gen = batcher.submit(_job("auto", "code z"))
    token = batcher.submit(_job("token-moe", "anything"))
    gate.set()
    assert [d.expert for d in route.result(10)] == ["code", "law"]
    assert gen.result(10).text == "answer to code z" and token.result(10).text == "answer to anything"
    assert backend.router.calls[1] == ["code x", "law y", "code z"]


def test_a_swapped_router_is_used_from_the_next_batch_on(gated):
    backend, batcher, gate = gated
    batcher.submit(_job("auto", "law hold"))
    assert backend.started.wait(10)
    backend.router = Router("r2")  # what Engine.reload_router does
    after = batcher.submit(_job("auto", "law after"))
    gate.set()
    assert after.result(10).router == "r2"


def test_metrics_count_requests_batches_and_tokens():
    backend, metrics = Backend(), Metrics()
    batcher = Batcher(backend, Batching(max_batch_size=8, max_wait_ms=200, max_queue=10, timeout=30), metrics)
    futures = [batcher.submit(_job("law", f"law {i}")) for i in range(3)]
    assert all(f.result(10) for f in futures)
    batcher.stop()
    text = metrics.render()[0].decode()
    assert 'moe_experts_requests_total{expert="law",outcome="ok",route="law"} 3.0' in text
    assert 'moe_experts_generated_tokens_total{expert="law",route="law"} 9.0' in text
    assert 'moe_experts_batch_size_sum{kind="single"} 3.0' in text
    assert 'moe_experts_batch_size_count{kind="single"} 1.0' in text
    assert metrics.tokens_per_second() > 0


def test_two_workers_decode_two_lanes_at_once_never_one_lane_twice():
    gate = threading.Event()
    backend = Backend(gate, gated={("law",)})
    batcher = Batcher(backend, Batching(max_batch_size=4, max_wait_ms=0, max_queue=10, timeout=30, workers=2),
                      Metrics())
    held = batcher.submit(_job("law", "law held"))
    assert backend.started.wait(10)
    more_law = batcher.submit(_job("law", "law next"))
    code = batcher.submit(_job("code", "code meanwhile"))
    assert code.result(10).text == "answer to code meanwhile"  # the second worker took the other lane
    assert not more_law.done()  # law is busy in the first worker: its next batch waits for it
    gate.set()
    assert held.result(10) and more_law.result(10)
    batcher.stop()
    assert [texts for _, texts in backend.batches] == [["law held"], ["code meanwhile"], ["law next"]]
