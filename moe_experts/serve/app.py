"""The FastAPI application: OpenAI-compatible endpoints over an ``Engine``.

Bodies are read here with a byte cap and validated by ``schemas`` (not by FastAPI's own body parsing), so
every refusal has the OpenAI error shape and the status the issue asks for. Requests are queued with the
engine's batch worker (``serve.batcher``) and awaited without holding a thread; a client that hangs up
cancels its request. With ``stream: true`` the answer is sent as server-sent events in OpenAI's chunk
format as it is generated, ending with ``data: [DONE]`` (``serve.sse``); the routing decision
(``moe_experts``) comes on the chunk that carries ``finish_reason``. ``GET /metrics`` is Prometheus'
text format (``serve.metrics``); ``POST /admin/reload-router``, from this machine only, swaps in a
retrained router (as SIGHUP does).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from moe_experts.serve.errors import APIError, from_library, from_outcome, install
from moe_experts.serve.metrics import MetricsMiddleware
from moe_experts.serve.schemas import ChatRequest, CompletionRequest, RouteRequest, parse

if TYPE_CHECKING:
    from moe_experts.serve.engine import Completion, Engine

# A JSON string may spend up to 6 bytes (\u00XX) on one byte of text; the rest of the body is small.
BODY_FACTOR, BODY_SLACK = 6, 64 * 1024
DISCONNECT_POLL = 0.5  # seconds between checks that a client waiting for a whole answer is still there
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def create_app(engine: Engine) -> FastAPI:
    from moe_experts import __version__
    from moe_experts.serve.engine import Settings

    app = FastAPI(title="moe-experts", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    install(app)
    app.add_middleware(MetricsMiddleware, metrics=engine.metrics)
    body_limit = BODY_FACTOR * engine.max_bytes + BODY_SLACK

    async def read(request: Request, model: type) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > body_limit:
            raise _too_large(int(declared), body_limit, engine.max_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > body_limit:
                raise _too_large(len(body), body_limit, engine.max_bytes)
        return parse(model, bytes(body))

    def check_text(text: str, param: str) -> str:
        from moe_experts.inference.ask import check_request

        size = len(text.encode("utf-8", "surrogatepass"))
        if size > engine.max_bytes:
            raise APIError(413, f"the request text is {size:,} bytes; the limit is {engine.max_bytes:,} (as for "
                           "`moe-experts ask`; the server's --max-bytes)", param=param, code="request_too_large")
        if not text.strip():
            raise APIError(400, f"`{param}`: the request is empty; send the question's text", param=param,
                           code="invalid_value")
        try:
            return check_request(text, where=f"`{param}`", max_bytes=engine.max_bytes)
        except Exception as exc:  # not UTF-8 (a lone surrogate escape): a bad field
            err = from_library(exc, param=param)
            raise APIError(400, err.message, param=param, code="invalid_value") from None

    async def answer(request: Request, req: Any, texts: list[str], kind: str) -> Any:
        engine.check_model(req.model)
        settings = Settings(max_tokens=req.new_tokens(), temperature=req.temperature, top_p=req.top_p,
                            seed=req.seed, stop=req.stops())
        engine.check_settings(req.model, settings)
        rid, created = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            from moe_experts.serve.sse import stream

            usage = req.stream_options is not None and req.stream_options.include_usage
            return stream(engine, kind, rid, created, req.model, texts, settings, usage)
        cancel = threading.Event()
        futures = engine.submit_all(req.model, texts, settings, cancel=cancel, name=rid)
        try:
            done = await _wait(request, futures, cancel)
        except Exception as exc:
            raise from_outcome(exc, engine.batching.timeout) from None
        return JSONResponse(_body(kind, rid, created, req.model, done))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        req: ChatRequest = await read(request, ChatRequest)
        return await answer(request, req, [check_text(req.text(), "messages")], "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req: CompletionRequest = await read(request, CompletionRequest)
        prompts = req.prompts()
        names = ["prompt"] if isinstance(req.prompt, str) else [f"prompt.{i}" for i in range(len(prompts))]
        return await answer(request, req, [check_text(t, n) for t, n in zip(prompts, names)], "text")

    @app.post("/v1/route")
    async def route(request: Request) -> Any:
        req: RouteRequest = await read(request, RouteRequest)
        texts = [check_text(t, f"texts.{i}") for i, t in enumerate(req.texts)]
        futures = [engine.submit_route(texts)]  # a full queue refuses it here (503)
        try:
            decisions = (await _wait(request, futures, threading.Event()))[0]
        except Exception as exc:
            raise from_outcome(exc, engine.batching.timeout) from None
        data = []
        for i, d in enumerate(decisions):
            row = {k: v for k, v in d.to_json().items() if k != "neighbours"}
            data.append({"index": i, **row})
        return {"object": "list", "data": data}

    @app.get("/v1/models")
    async def models() -> Any:
        created = int(engine.moe.workspace.root.stat().st_mtime)
        return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "moe-experts"}
                                           for m in engine.models]}

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok", "models": engine.models, "experts": engine.experts,
                "workspace": str(engine.moe.workspace.root), "router_version": engine.router_version,
                "load_seconds": round(engine.load_seconds, 3)}

    @app.get("/metrics")
    async def metrics() -> Any:
        body, content_type = engine.metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/admin/reload-router")
    async def reload_router(request: Request) -> Any:
        client = request.client.host if request.client is not None else ""
        if client not in LOOPBACK:
            raise APIError(403, f"the admin endpoint answers only this machine (127.0.0.1 or ::1), not {client}; "
                           "reload from the server's machine, or send the server SIGHUP", code="forbidden")
        try:
            return await run_in_threadpool(engine.reload_router)
        except Exception as exc:
            err = from_library(exc)
            raise APIError(409, f"the router was not reloaded; the current one ({engine.router_version}) keeps "
                           f"serving: {err.message}", code="reload_failed", kind="server_error") from None

    return app


async def _wait(request: Request, futures: list[Future], cancel: threading.Event) -> list[Any]:
    """Every future's result, in order; a client that disconnects meanwhile cancels them."""
    waiting = [asyncio.wrap_future(f) for f in futures]
    try:
        while True:
            _, pending = await asyncio.wait(waiting, timeout=DISCONNECT_POLL)
            if not pending:
                return [w.result() for w in waiting]
            if await request.is_disconnected():
                cancel.set()
    finally:
        if not all(w.done() for w in waiting):
            cancel.set()


def _too_large(size: int, limit: int, max_bytes: int) -> APIError:
    return APIError(413, f"the body is {size:,} bytes; the limit is {limit:,} ({BODY_FACTOR} x the {max_bytes:,}-byte "
                    f"limit on a request text, --max-bytes, plus {BODY_SLACK // 1024} KiB for the JSON around it)",
                    code="request_too_large")


def _body(kind: str, rid: str, created: int, model: str, done: Sequence[Completion]) -> dict[str, Any]:
    choices = []
    for i, c in enumerate(done):
        if kind == "chat":
            choices.append({"index": i, "message": {"role": "assistant", "content": c.text},
                            "finish_reason": c.finish_reason, "logprobs": None})
        else:
            choices.append({"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None})
    usage = {k: sum(c.usage()[k] for c in done) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    info: Any = done[0].info if len(done) == 1 else [c.info for c in done]  # a list, in choice order
    return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion", "created": created,
            "model": model, "choices": choices, "usage": usage, "moe_experts": info}
