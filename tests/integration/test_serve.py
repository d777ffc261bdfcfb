"""`moe-experts serve` end to end: one live server on 127.0.0.1 over the micro workspace, driven by the official
`openai` client (and raw HTTP where the client would refuse to send the bad request)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import openai
import pytest

from tests.conftest import REPO
from tests.integration.test_router import PROMPTS

EXPERTS = ["code", "general", "law", "medicine"]


def serve_cmd(setup, *args: str) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "moe_experts", "--preset", "micro", "--cards", setup.registry.source_dir,
           "-w", str(setup.workspace.root), "serve", *args]
    return cmd, {**os.environ, "PYTHONPATH": str(REPO), "MOE_EXPERTS_NO_PROGRESS": "1"}


@pytest.fixture(scope="module")
def served(routed, tmp_path_factory):
    """A copy of the routed micro workspace with a token-level MoE added (the shared one stays as it was)."""
    from dataclasses import replace

    from moe_experts.recipes import TokenRouterRecipe
    from moe_experts.routing.train_token import train_token_router
    from moe_experts.workspace import Workspace

    setup, _, _ = routed
    root = tmp_path_factory.mktemp("served") / "micro"
    shutil.copytree(setup.workspace.root, root)
    copy = replace(setup, workspace=Workspace(root))
    fast = {"train": "gates", "training": {"steps": 2, "learning_rate": 0.01, "warmup_steps": 0, "weight_decay": 0.0},
            "gate_init_blocks_per_domain": 2, "health_blocks_per_domain": 2, "dead_expert_share": 0.0}
    train_token_router(copy, TokenRouterRecipe.model_validate(fast))
    return copy


@pytest.fixture(scope="module")
def server_log(tmp_path_factory):
    return tmp_path_factory.mktemp("serve") / "server.log"


def start(setup, log, *args: str) -> tuple[str, subprocess.Popen]:
    """A server started through the CLI on a free port (the ready line names it): (base URL, process)."""
    cmd, env = serve_cmd(setup, "--port", "0", "--no-access-log", *args)
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    url = None
    deadline = time.monotonic() + 300
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("ready: "):
                url = line.split()[1]  # http://127.0.0.1:PORT/v1
        time.sleep(0.2)
    if url is None:
        proc.kill()
        pytest.fail(f"the server did not say ready:\n{log.read_text(errors='replace')}")
    return url, proc


def stop(proc: subprocess.Popen, log) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    out = log.read_text(errors="replace")
    assert code == 0 and "Finished server process" in out, (code, out)
    assert "Traceback" not in out, out


@pytest.fixture(scope="module")
def live(served, server_log):
    """The server most tests talk to, with the default batching: (base URL, process)."""
    before = _files(served.workspace.root)
    url, proc = start(served, server_log)
    yield url, proc
    stop(proc, server_log)
    assert _files(served.workspace.root) == before  # the server only reads the workspace


@pytest.fixture(scope="module")
def server(live):
    return live[0]


def _files(root) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=120)


def post(server: str, path: str, body: bytes | dict, **headers: str) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server + path, content=data, headers={"content-type": "application/json", **headers},
                      timeout=120)


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in response.text
    return body["error"]


def chat(client, model: str, text: str, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kw)


# ---------------------------------------------------------------------------------------------- answers


def test_models_list_and_healthz(client, server):
    assert [m.id for m in client.models.list()] == ["auto", "auto-mix", *EXPERTS, "token-moe"]
    health = httpx.get(server.removesuffix("/v1") + "/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["experts"] == EXPERTS


def test_chat_answers_with_the_routed_expert_and_says_why(client):
    out = chat(client, "auto", PROMPTS["code"], max_tokens=4, temperature=0)
    choice = out.choices[0]
    assert out.object == "chat.completion" and out.model == "auto"
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= out.usage.completion_tokens <= 4 and out.usage.prompt_tokens > 0
    info = out.model_extra["moe_experts"]
    assert info["expert"] == "code" and info["experts"] == [{"name": "code", "weight": 1.0}]
    assert set(info["posterior"]) == set(EXPERTS) and abs(sum(info["posterior"].values()) - 1) < 1e-3
    assert info["reason"]


def test_completion_with_a_forced_expert_and_a_seed_repeats(client):
    kw = dict(model="law", prompt=PROMPTS["medicine"], max_tokens=4, temperature=1.0, seed=7)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert a.object == "text_completion" and a.choices[0].text == b.choices[0].text
    info = a.model_extra["moe_experts"]
    assert info["expert"] == "law" and "names this expert" in info["reason"] and "medicine" in info["reason"]


def test_auto_mix_mixes_the_top_two_experts(client):
    info = chat(client, "auto-mix", PROMPTS["law"], max_tokens=2, temperature=0).model_extra["moe_experts"]
    if info["abstained"]:  # an abstained request goes to the fallback alone, by design
        assert [e["name"] for e in info["experts"]] == ["general"]
    else:
        assert len(info["experts"]) == 2 and info["experts"][0]["name"] == info["expert"]
        assert abs(sum(e["weight"] for e in info["experts"]) - 1) < 1e-3


def test_token_moe_answers_without_a_document_decision(client):
    out = client.completions.create(model="token-moe", prompt=PROMPTS["general"], max_tokens=3, temperature=0)
    assert 1 <= out.usage.completion_tokens <= 3
    info = out.model_extra["moe_experts"]
    assert info["expert"] is None and info["posterior"] is None and "token-level MoE" in info["reason"]


def test_streaming_sends_the_same_answer_in_chunks_then_done(client, server):
    whole = chat(client, "general", PROMPTS["general"], max_tokens=6, temperature=0)
    chunks = list(chat(client, "general", PROMPTS["general"], max_tokens=6, temperature=0, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].model_extra["moe_experts"]["expert"] == "general"  # the decision rides on the last chunk
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    raw = post(server, "/completions", {"model": "auto", "prompt": PROMPTS["law"], "max_tokens": 2, "stream": True,
                                        "stream_options": {"include_usage": True}})
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    usage = json.loads(events[-2].removeprefix("data: "))
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1


def test_stop_cuts_the_answer_before_the_stop_string(client):
    whole = chat(client, "general", PROMPTS["general"], max_tokens=8, temperature=0).choices[0].message.content
    assert whole, "the greedy answer is empty; the stop test needs some text"
    stop = whole[len(whole) // 2]
    cut = chat(client, "general", PROMPTS["general"], max_tokens=8, temperature=0, stop=[stop]).choices[0]
    assert cut.message.content == whole[: whole.find(stop)] and cut.finish_reason == "stop"
    streamed = list(chat(client, "general", PROMPTS["general"], max_tokens=8, temperature=0, stop=[stop], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut.message.content
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_the_library_streamer_sees_exactly_the_generated_tokens(served):
    """The hook in inference.generate: model.generate and the mixture loop feed a BaseStreamer the same way."""
    from moe_experts.inference.generate import GenerationSettings, generate, generate_mixture
    from moe_experts.modeling.stages import load_expert

    class Collect:
        def __init__(self):
            self.calls, self.ended = [], False

        def put(self, value):
            self.calls.append(value.reshape(-1).tolist())

        def end(self):
            self.ended = True

    a, b = (load_expert(served, n) for n in ("law", "medicine"))
    settings = GenerationSettings(max_new_tokens=6, temperature=0)
    for run in (lambda st: generate(a.model, a.tokenizer, [PROMPTS["law"]], settings, streamer=st)[0],
                lambda st: generate_mixture([a.model, b.model], [0.6, 0.4], a.tokenizer, PROMPTS["law"], settings,
                                            streamer=st)):
        seen = Collect()
        out = run(seen)
        assert out.token_ids == run(None).token_ids  # streaming does not change the answer
        assert seen.ended and len(seen.calls[0]) > 1  # the prompt first, as model.generate does
        streamed = [t for call in seen.calls[1:] for t in call]
        assert streamed[: len(out.token_ids)] == list(out.token_ids)
    with pytest.raises(ValueError, match="one at a time"):
        generate(a.model, a.tokenizer, ["x", "y"], settings, streamer=Collect())


def test_every_event_is_one_line_whatever_the_text_holds():
    """The load test found one answer in 10,000 whose text held a character str.splitlines breaks at (httpx's
    aiter_lines does): the event's JSON arrived in two lines. Such characters are escaped now."""
    from moe_experts.serve.sse import event

    text = "a\u2028b\x85c\u2029d\ne\rf\x1cg\x0bh\x0ci é"
    line = event({"text": text}).decode()
    assert line.endswith("\n\n") and len(line[:-2].splitlines()) == 1
    assert json.loads(line.removeprefix("data: "))["text"] == text and "é" in line  # still UTF-8, not \u00e9


def test_a_stop_string_split_across_tokens_is_held_back():
    from moe_experts.serve.pieces import held_back

    assert held_back("the end", ["END", "d."]) == 1 and held_back("a st", ["stop"]) == 2
    assert held_back("abc", ["xyz"]) == 0 and held_back("", ["stop"]) == 0
    assert held_back("sto", ["stop", "tomato"]) == 3  # the longer candidate wins


def test_streamed_chunks_come_while_generating_and_a_disconnect_frees_the_engine(server, server_log):
    """Read one content chunk, hang up: the server stops generating early (so that chunk was sent before
    the answer was done), and the next request is answered."""
    refused = post(server, "/completions", {"model": "auto-mix", "prompt": "hi", "max_tokens": 100_000})
    limit = int(error_of(refused, 422)["message"].split("generates at most ")[1].split()[0])
    before = server_log.read_text(errors="replace").count("the client went away")
    for seed in range(3, 13):  # a sampled answer may end at once (eos): then the next seed
        body = {"model": "auto-mix", "prompt": PROMPTS["medicine"], "max_tokens": limit, "temperature": 1.0,
                "seed": seed, "stream": True}
        with httpx.stream("POST", server + "/completions", json=body, timeout=120) as response:
            assert response.status_code == 200
            texts = (json.loads(line[6:])["choices"][0]["text"] for line in response.iter_lines()
                     if line.startswith("data: {"))
            if any(texts):
                break  # the first text; leaving the block closes the connection
    else:
        pytest.fail("ten sampled answers were all empty")
    deadline = time.monotonic() + 60
    while server_log.read_text(errors="replace").count("the client went away") == before:
        assert time.monotonic() < deadline, server_log.read_text(errors="replace")
        time.sleep(0.1)
    line = server_log.read_text(errors="replace").split("the client went away")[-1].splitlines()[0]
    stopped_after = int(line.split("stopped after ")[1].split()[0])
    assert stopped_after < limit, line
    out = post(server, "/completions", {"model": "auto", "prompt": PROMPTS["code"], "max_tokens": 2})
    assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] >= 1


def test_route_returns_decisions_only(server):
    out = post(server, "/route", {"texts": [PROMPTS[d] for d in EXPERTS]})
    assert out.status_code == 200, out.text
    data = out.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2, 3]
    assert [d["predicted"] for d in data] == EXPERTS
    assert all(set(d) >= {"expert", "posterior", "reason", "abstained"} for d in data)


def test_concurrent_requests_are_each_answered_with_their_own_expert(client):
    with ThreadPoolExecutor(len(EXPERTS)) as pool:
        outs = list(pool.map(lambda d: chat(client, "auto", PROMPTS[d], max_tokens=2, temperature=0), EXPERTS))
    assert [o.model_extra["moe_experts"]["expert"] for o in outs] == EXPERTS


def test_requests_for_different_experts_share_a_stacked_batch_and_each_gets_its_own_experts_answer(client, server):
    """The micro experts stack: eight concurrent requests forced to four experts are decoded in stacked
    batches (the batch-size histogram's kind "stacked"), and each answer equals what its expert gives alone."""
    def stacked() -> float:
        text = httpx.get(server.removesuffix("/v1") + "/metrics", timeout=30).text
        line = [x for x in text.splitlines() if x.startswith('moe_experts_batch_size_count{kind="stacked"}')]
        return float(line[0].split()[1]) if line else 0.0

    def answer(d: str, i: int = 0) -> str:
        return chat(client, d, f"{PROMPTS[d]} {i}", max_tokens=8, temperature=0).choices[0].message.content

    alone = {(d, i): answer(d, i) for d in EXPERTS for i in range(2)}  # one at a time: each expert's own model
    before = stacked()
    wanted = [(d, i) for i in range(2) for d in EXPERTS]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            assert list(pool.map(lambda w: answer(*w), wanted)) == [alone[w] for w in wanted]
    assert stacked() > before
    assert len(set(alone.values())) > 1  # the experts answer differently, so a row given the wrong one would show


# ---------------------------------------------------------------------------------------------- refusals


def test_a_busy_port_is_refused_before_models_load(routed):
    setup, _, _ = routed
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cmd, env = serve_cmd(setup, "--port", str(taken.getsockname()[1]))
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "cannot listen on 127.0.0.1:" in out.stderr and "--port" in out.stderr and "Traceback" not in out.stderr


def test_a_body_that_is_not_json_or_has_bad_fields_is_400(server):
    assert error_of(post(server, "/chat/completions", b'{"model": "auto", '), 400)["code"] == "invalid_json"
    assert error_of(post(server, "/chat/completions", b"[1, 2]"), 400)["code"] == "invalid_json"
    err = error_of(post(server, "/chat/completions", {"model": "auto"}), 400)
    assert err["param"] == "messages" and err["code"] == "missing_field"
    bad_type = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}
    assert error_of(post(server, "/chat/completions", bad_type), 400)["param"] == "temperature"
    unknown = {"model": "auto", "prompt": "hi", "tools": []}
    assert error_of(post(server, "/completions", unknown), 400)["code"] == "unknown_parameter"
    empty = {"model": "auto", "messages": [{"role": "user", "content": "  "}]}
    assert "empty" in error_of(post(server, "/chat/completions", empty), 400)["message"]
    nested = {"model": "auto", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    assert error_of(post(server, "/chat/completions", nested), 400)["param"].startswith("messages.0.content.0.")


def test_a_setting_the_server_cannot_honour_is_refused_not_ignored(client):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, "auto", "hi", n=2)
    assert caught.value.body["param"] == "n" and "not supported" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        chat(client, "auto", "hi", presence_penalty=0.5)
    with pytest.raises(openai.BadRequestError):
        chat(client, "auto", "hi", logprobs=True)


def test_an_unknown_model_is_404_naming_the_available_ones(client):
    with pytest.raises(openai.NotFoundError) as caught:
        chat(client, "gpt-4o", "hi")
    assert "auto, auto-mix, code, general, law, medicine, token-moe" in caught.value.body["message"]


def test_an_oversized_text_or_body_is_413(client, server):
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(model="auto", prompt="x" * 100_001)
    assert caught.value.status_code == 413 and "100,000" in caught.value.body["message"]
    huge = post(server, "/route", {"texts": ["y" * 100_000] * 8})  # each text fits; the body does not
    assert error_of(huge, 413)["code"] == "request_too_large"


def test_out_of_range_values_are_422(client):
    for kw, param in ((dict(temperature=2.5), "temperature"), (dict(top_p=0), "top_p"), (dict(max_tokens=0), "max_tokens"),
                      (dict(max_tokens=100_000), "max_tokens"), (dict(seed=2**64), "seed"),
                      (dict(stop=["a", "b", "c", "d", "e"]), "stop")):
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            chat(client, "auto", "hi", **kw)
        assert caught.value.body["param"].startswith(param), (kw, caught.value.body)


def test_unknown_paths_and_methods_answer_in_the_same_error_shape(server):
    assert error_of(httpx.get(server + "/nothing", timeout=30), 404)["code"] == "not_found"
    assert error_of(httpx.get(server + "/chat/completions", timeout=30), 405)["code"] == "method_not_allowed"


def test_a_completion_with_several_prompts_answers_each_in_order(client, server):
    prompts = [PROMPTS["law"], PROMPTS["code"], PROMPTS["medicine"]]
    out = client.completions.create(model="auto", prompt=prompts, max_tokens=3, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [i["expert"] for i in out.model_extra["moe_experts"]] == ["law", "code", "medicine"]
    alone = [client.completions.create(model="auto", prompt=p, max_tokens=3, temperature=0) for p in prompts]
    assert [c.text for c in out.choices] == [a.choices[0].text for a in alone]  # batched or alone: same answer
    assert out.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    chunks = list(client.completions.create(model="auto", prompt=prompts[:2], max_tokens=3, temperature=0,
                                            stream=True))
    for i in (0, 1):
        assert "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) == \
            out.choices[i].text
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(c.choices[0].index for c in finished) == [0, 1]
    too_many = post(server, "/completions", {"model": "auto", "prompt": ["x"] * 33})
    assert error_of(too_many, 422)["param"] == "prompt"


def test_concurrent_requests_are_batched_and_metrics_say_so(client, server):
    """Eight clients at once for one expert: some of them share a batch (the batch-size histogram shows a
    batch of more than one), and /metrics counts them per route and expert, with latency histograms."""
    def sizes() -> tuple[float, float]:
        text = httpx.get(server.removesuffix("/v1") + "/metrics", timeout=30).text
        values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}
        kind = '{kind="single"}'
        return values[f"moe_experts_batch_size_sum{kind}"], values[f"moe_experts_batch_size_count{kind}"]

    before_sum, before_count = sizes()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            outs = list(pool.map(lambda i: chat(client, "code", f"{PROMPTS['code']} {i}", max_tokens=8,
                                                temperature=0), range(8)))
            assert all(o.model_extra["moe_experts"]["expert"] == "code" for o in outs)
    after_sum, after_count = sizes()
    assert httpx.get(server + "/nothing", timeout=30).status_code == 404
    assert after_sum - before_sum == 24 and after_count - before_count < 24  # 24 requests in fewer batches
    response = httpx.get(server.removesuffix("/v1") + "/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for series in ('moe_experts_requests_total{expert="code",outcome="ok",route="code"}',
                   'moe_experts_request_duration_seconds_bucket{expert="code",le="+Inf",route="code"}',
                   'moe_experts_time_to_first_token_seconds_count{expert="code",route="code"}',
                   'moe_experts_routing_seconds_count{route="code"}',
                   'moe_experts_generated_tokens_total{expert="code",route="code"}',
                   'moe_experts_http_requests_total{endpoint="/v1/chat/completions",status="200"}',
                   'moe_experts_tokens_per_second ', 'moe_experts_queue_depth ', 'moe_experts_router_info{version="'):
        assert series in text, series
    assert 'moe_experts_http_requests_total{endpoint="other",status="404"}' in text  # errors are counted too


# ---------------------------------------------------------------------------------------------- overload, reload


@pytest.fixture(scope="module")
def strict(routed, tmp_path_factory):
    """A second server, one request at a time with a short queue and timeout, on its own copy of the routed
    workspace (no token-level MoE): (base URL, process, setup, log)."""
    from dataclasses import replace

    from moe_experts.workspace import Workspace

    setup, _, _ = routed
    root = tmp_path_factory.mktemp("strict") / "micro"
    shutil.copytree(setup.workspace.root, root)
    copy = replace(setup, workspace=Workspace(root))
    log = tmp_path_factory.mktemp("strict-log") / "server.log"
    url, proc = start(copy, log, "--max-batch-size", "1", "--max-queue", "12", "--timeout", "0.5")
    yield url, proc, copy, log
    stop(proc, log)


def test_a_full_queue_is_503_with_retry_after_and_a_slow_request_is_504(strict):
    """One request at a time, twelve waiting at most, a 0.5 s timeout: a burst of 48 sent together overflows the
    queue (503), and the last of the twelve wait past the timeout (504). The burst is async, so the requests
    arrive within milliseconds however loaded the machine is; it is repeated (four times at most) until both
    have been seen, since a machine fast enough could in principle drain the queue as it fills."""
    import asyncio

    url = strict[0]
    refused = post(url, "/completions", {"model": "law", "prompt": "hi", "max_tokens": 100_000})
    limit = int(error_of(refused, 422)["message"].split("generates at most ")[1].split()[0])
    body = {"model": "law", "prompt": PROMPTS["law"], "max_tokens": limit, "temperature": 1.0}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=48)) as c:
            return await asyncio.gather(*(c.post(url + "/completions", json=body) for _ in range(48)))

    answers: list[httpx.Response] = []
    for _ in range(4):
        answers += asyncio.run(burst())
        statuses = [r.status_code for r in answers]
        if 503 in statuses and 504 in statuses:
            break
    assert set(statuses) <= {200, 503, 504} and 200 in statuses, statuses
    busy = [r for r in answers if r.status_code == 503]
    assert busy, statuses
    err = error_of(busy[0], 503)
    assert err["code"] == "server_overloaded" and "--max-queue 12" in err["message"]
    assert int(busy[0].headers["retry-after"]) >= 1
    late = [r for r in answers if r.status_code == 504]
    assert late, statuses
    err = error_of(late[0], 504)
    assert err["code"] == "timeout" and "--timeout" in err["message"]
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    assert client.completions.create(model="law", prompt="hi", max_tokens=2).choices  # still serving


def test_token_moe_is_404_with_the_command_that_builds_it(strict):
    err = error_of(post(strict[0], "/chat/completions", {"model": "token-moe", "messages": [{"role": "user",
                                                                                             "content": "hi"}]}), 404)
    assert "train-router --kind token" in err["message"] and "token-moe" not in err["message"].split("available:")[1]


def _publish_copy(root, *, corrupt: bool = False) -> str:
    """A new router version with the live one's files (one byte of the classifier flipped when ``corrupt``),
    published as train-router publishes: the version folder first, then CURRENT replaced."""
    folder = root / "routers" / "doc"
    live = folder / (folder / "CURRENT").read_text().strip()
    version = f"v-{time.time_ns():020d}-{os.getpid()}"
    shutil.copytree(live, folder / version)
    if corrupt:
        weights = folder / version / "classifier.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0x01
        weights.write_bytes(bytes(data))
    (folder / "CURRENT.tmp").write_text(version + "\n")
    os.replace(folder / "CURRENT.tmp", folder / "CURRENT")
    return version


def test_the_router_reloads_on_sighup_and_from_the_admin_endpoint_without_dropping_requests(strict):
    url, proc, setup, log = strict
    base = url.removesuffix("/v1")

    def health() -> dict:
        return httpx.get(base + "/healthz", timeout=30).json()

    first = health()["router_version"]
    stop_flag, answered = [], []

    def keep_asking() -> None:
        while not stop_flag:
            answered.append(post(url, "/route", {"texts": [PROMPTS["law"]]}).status_code)

    with ThreadPoolExecutor(1) as pool:
        asking = pool.submit(keep_asking)
        second = _publish_copy(setup.workspace.root)
        out = httpx.post(base + "/admin/reload-router", timeout=60)
        assert out.status_code == 200, out.text
        assert out.json()["previous"] == first and out.json()["version"] == second and out.json()["changed"]
        assert health()["router_version"] == second
        third = _publish_copy(setup.workspace.root)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while health()["router_version"] != third:
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        stop_flag.append(True)
        asking.result()
    assert answered and set(answered) == {200}, answered  # no request was dropped while the router changed
    _publish_copy(setup.workspace.root, corrupt=True)
    err = error_of(httpx.post(base + "/admin/reload-router", timeout=60), 409)
    assert err["code"] == "reload_failed" and "classifier.safetensors" in err["message"] and third in err["message"]
    assert health()["router_version"] == third  # the router that loaded keeps serving
    assert post(url, "/route", {"texts": [PROMPTS["code"]]}).json()["data"][0]["predicted"] == "code"


def test_the_admin_endpoint_refuses_other_machines():
    from fastapi.testclient import TestClient

    from moe_experts.serve.app import create_app
    from moe_experts.serve.metrics import Metrics

    engine = SimpleNamespace(max_bytes=100, metrics=Metrics(), reload_router=lambda: pytest.fail("reloaded"))
    with TestClient(create_app(engine), client=("203.0.113.9", 5000)) as remote:
        out = remote.post("/admin/reload-router")
    assert out.status_code == 403 and "203.0.113.9" in out.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------- shutdown (last)


def test_sigterm_refuses_new_connections_finishes_the_request_in_flight_and_exits_0(served, tmp_path):
    """Its own server, one request at a time, so that sixteen streams are still generating when the signal
    comes (batched, the micro models finish them all inside uvicorn's first 0.1 s of shutdown)."""
    server_log = tmp_path / "server.log"
    url, proc = start(served, server_log, "--max-batch-size", "1")
    refused = post(url, "/completions", {"model": "auto-mix", "prompt": "hi", "max_tokens": 100_000})
    limit = int(error_of(refused, 422)["message"].split("generates at most ")[1].split()[0])
    body = {"model": "auto-mix", "prompt": PROMPTS["medicine"], "max_tokens": limit, "temperature": 1.0,
            "stream": True}
    with contextlib.ExitStack() as stack:
        # Sixteen streams in flight, each with its first chunk, generated one after another.
        # Each its own seed: one sampled answer may end at its first token (eos), sixteen will not all.
        streams = [stack.enter_context(httpx.stream("POST", url + "/completions", json={**body, "seed": seed},
                                                    timeout=120)) for seed in range(16)]
        lines = [r.iter_lines() for r in streams]
        assert all(next(it).startswith("data: ") for it in lines)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while True:  # the listening socket closes while these responses are still open
            try:
                httpx.get(url.removesuffix("/v1") + "/healthz", timeout=5)
            except httpx.ConnectError:
                break
            assert time.monotonic() < deadline, "the server still accepts connections after SIGTERM"
            time.sleep(0.05)
        rests = [[line for line in it if line] for it in lines]
    for rest in rests:  # every request in flight was answered in full
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2].removeprefix("data: "))["choices"][0]["finish_reason"] in ("stop", "length")
    assert proc.wait(timeout=60) == 0
    assert "Waiting for connections to close" in server_log.read_text(errors="replace")  # it was in flight
    stop(proc, server_log)  # exit 0, "Finished server process", no traceback
