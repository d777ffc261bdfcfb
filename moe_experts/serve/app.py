"""The FastAPI application: OpenAI-compatible endpoints over an ``Engine``.

Bodies are read here with a byte cap and validated by ``schemas`` (not by FastAPI's own body parsing), so
every refusal has the OpenAI error shape and the status the issue asks for. Generation runs in a worker
thread; with ``stream: true`` the answer is sent as server-sent events in OpenAI's chunk format, ending
with ``data: [DONE]``. A streamed answer is sent as it is generated (``serve.sse``); the routing
decision (``moe_experts``) comes on the chunk that carries ``finish_reason``.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from moe_experts.serve.errors import APIError, from_library, install
from moe_experts.serve.schemas import ChatRequest, CompletionRequest, RouteRequest, parse

if TYPE_CHECKING:
    from moe_experts.serve.engine import Completion, Engine

# A JSON string may spend up to 6 bytes (\u00XX) on one byte of text; the rest of the body is small.
BODY_FACTOR, BODY_SLACK = 6, 64 * 1024


def create_app(engine: Engine) -> FastAPI:
    from moe_experts import __version__
    from moe_experts.serve.engine import Settings

    app = FastAPI(title="moe-experts", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    install(app)
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

    async def answer(req: Any, text: str, kind: str) -> Any:
        engine.check_model(req.model)
        settings = Settings(max_tokens=req.new_tokens(), temperature=req.temperature, top_p=req.top_p,
                            seed=req.seed, stop=req.stops())
        engine.check_settings(req.model, settings)
        rid, created = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            from moe_experts.serve.sse import stream

            usage = req.stream_options is not None and req.stream_options.include_usage
            return stream(engine, kind, rid, created, req.model, text, settings, usage)
        try:
            done = await run_in_threadpool(engine.complete, req.model, text, settings)
        except APIError:
            raise
        except Exception as exc:
            raise from_library(exc) from None
        return JSONResponse(_body(kind, rid, created, req.model, done))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        req: ChatRequest = await read(request, ChatRequest)
        return await answer(req, check_text(req.text(), "messages"), "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req: CompletionRequest = await read(request, CompletionRequest)
        return await answer(req, check_text(req.text(), "prompt"), "text")

    @app.post("/v1/route")
    async def route(request: Request) -> Any:
        req: RouteRequest = await read(request, RouteRequest)
        texts = [check_text(t, f"texts.{i}") for i, t in enumerate(req.texts)]
        try:
            decisions = await run_in_threadpool(engine.route, texts)
        except Exception as exc:
            raise from_library(exc) from None
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
                "workspace": str(engine.moe.workspace.root), "load_seconds": round(engine.load_seconds, 3)}

    return app


def _too_large(size: int, limit: int, max_bytes: int) -> APIError:
    return APIError(413, f"the body is {size:,} bytes; the limit is {limit:,} ({BODY_FACTOR} x the {max_bytes:,}-byte "
                    f"limit on a request text, --max-bytes, plus {BODY_SLACK // 1024} KiB for the JSON around it)",
                    code="request_too_large")


def _body(kind: str, rid: str, created: int, model: str, done: Completion) -> dict[str, Any]:
    if kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": done.text},
                                  "finish_reason": done.finish_reason, "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": done.text, "finish_reason": done.finish_reason, "logprobs": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice],
            "usage": done.usage(), "moe_experts": done.info}
