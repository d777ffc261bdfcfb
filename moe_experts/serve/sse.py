"""Streaming an answer as it is generated: the HTTP side (OpenAI's chunk format as server-sent events).

Generation runs in a worker thread and hands text to the event loop (``serve.pieces`` makes the text);
the response ends with ``data: [DONE]``, and a client that goes away cancels generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi.responses import StreamingResponse

from moe_experts.serve.pieces import Cancelled

if TYPE_CHECKING:
    from moe_experts.serve.engine import Completion, Engine, Settings

logger = logging.getLogger(__name__)


class CancellingResponse(StreamingResponse):
    """A StreamingResponse that sets ``cancel`` however it ends: done, client gone, or an error."""

    def __init__(self, content: Any, cancel: threading.Event, **kw: Any) -> None:
        super().__init__(content, **kw)
        self.cancel = cancel

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.cancel.set()


def stream(engine: Engine, kind: str, rid: str, created: int, model: str, text: str, settings: Settings,
           usage: bool) -> CancellingResponse:
    """The SSE response for one streamed request; generation starts when the client starts reading."""
    cancel = threading.Event()
    return CancellingResponse(_events(engine, kind, rid, created, model, text, settings, usage, cancel), cancel,
                              media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _events(engine: Engine, kind: str, rid: str, created: int, model: str, text: str, settings: Settings,
                  usage: bool, cancel: threading.Event) -> AsyncIterator[bytes]:
    from moe_experts.serve.errors import APIError, from_library

    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def put(item: tuple[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            put(("done", engine.complete(model, text, settings, on_text=lambda s: put(("text", s)), cancel=cancel)))
        except Cancelled as exc:
            logger.info("stream %s: the client went away; generation stopped after %d of at most %s tokens", rid,
                        exc.tokens, settings.max_tokens or "the card's")
            put(("cancelled", None))
        except Exception as exc:  # reported to the client as an error event, never a traceback
            logger.exception("stream %s failed", rid)
            put(("error", exc))

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices, **extra}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

    def choice(piece: str | None, finish: str | None) -> dict[str, Any]:
        if kind == "chat":
            delta = {} if piece is None else {"content": piece}
            return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}

    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None} \
        if kind == "chat" else choice("", None)
    yield chunk([first])
    thread = threading.Thread(target=work, name=f"stream-{rid[-8:]}", daemon=True)
    thread.start()
    sent = ""
    try:
        while True:
            what, value = await queue.get()
            if what == "text":
                sent += value
                yield chunk([choice(value, None)])
            elif what == "done":
                done: Completion = value
                if not done.text.startswith(sent):  # decoding a prefix differed from the whole (rare)
                    logger.warning("stream %s: streamed text is not a prefix of the answer", rid)
                elif len(done.text) > len(sent):  # what was held back, or the whole answer when not streamed
                    yield chunk([choice(done.text[len(sent):], None)])
                # The decision rides on the last chunk: it is known only once generation has begun.
                yield chunk([choice(None, done.finish_reason)], moe_experts=done.info)
                if usage:

                    yield chunk([], usage=done.usage())
                yield b"data: [DONE]\n\n"
                return
            elif what == "error":
                err = value if isinstance(value, APIError) else from_library(value)
                yield f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n".encode()
                return
            else:
                return
    finally:
        cancel.set()  # a client that disconnected stops generation at the next token
