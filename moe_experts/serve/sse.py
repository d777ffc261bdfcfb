"""Streaming an answer as it is generated: the HTTP side (OpenAI's chunk format as server-sent events).

The batch worker hands text to the event loop as it is generated (``serve.pieces`` makes the text); the
response ends with ``data: [DONE]``, and a client that goes away cancels generation. A completion request
with several prompts streams them together, each chunk naming its choice's ``index``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from fastapi.responses import StreamingResponse

from moe_experts.serve.pieces import Cancelled

if TYPE_CHECKING:
    from moe_experts.serve.engine import Completion, Engine, Settings

logger = logging.getLogger(__name__)


# JSON leaves these unescaped, but line readers that split like str.splitlines (httpx's aiter_lines among
# them) end a line at each, cutting an event's JSON in two; escaped, every event is one line.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def event(data: Any) -> bytes:
    """One server-sent event: ``data: <json>`` on a single line, whatever characters the text holds."""
    return f"data: {json.dumps(data, ensure_ascii=False).translate(_LINE_BREAKS)}\n\n".encode()


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


def stream(engine: Engine, kind: str, rid: str, created: int, model: str, texts: Sequence[str], settings: Settings,
           usage: bool) -> CancellingResponse:
    """The SSE response for a streamed request (one choice per text). The texts are queued now, so a full
    queue is refused with 503 before the response starts; their pieces are sent as they are generated."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
    cancel = threading.Event()

    def put(item: tuple[str, int, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    engine.submit_all(model, texts, settings, cancel=cancel, name=rid,  # a full queue refuses it here (503)
                      on_text=lambda i, s: put(("text", i, s)), on_done=lambda i, f: put(("done", i, f)))
    events = _events(engine.batching.timeout, kind, rid, created, model, len(texts), usage, queue)
    return CancellingResponse(events, cancel, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _events(timeout: float, kind: str, rid: str, created: int, model: str, n: int, usage: bool,
                  queue: asyncio.Queue[tuple[str, int, Any]]) -> AsyncIterator[bytes]:
    from moe_experts.serve.errors import from_outcome

    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices, **extra}
        return event(data)

    def choice(i: int, piece: str | None, finish: str | None) -> dict[str, Any]:
        if kind == "chat":
            delta = {} if piece is None else {"content": piece}
            return {"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": i, "text": piece or "", "finish_reason": finish, "logprobs": None}

    for i in range(n):
        first = {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None} \
            if kind == "chat" else choice(i, "", None)
        yield chunk([first])
    sent = [""] * n
    done: list[Completion | None] = [None] * n
    while None in done:
        what, i, value = await queue.get()
        if what == "text":
            sent[i] += value
            yield chunk([choice(i, value, None)])
            continue
        try:
            finished: Completion = value.result()
        except Cancelled:
            return  # the client went away (the batch worker logs it)
        except Exception as exc:  # reported to the client as an error event, never a traceback
            yield event(from_outcome(exc, timeout).body())
            return
        if not finished.text.startswith(sent[i]):  # decoding a prefix differed from the whole (rare)
            logger.warning("stream %s: streamed text is not a prefix of the answer", rid)
        elif len(finished.text) > len(sent[i]):  # what was held back at the end
            yield chunk([choice(i, finished.text[len(sent[i]):], None)])
        # The decision rides on the choice's last chunk: it is known only once generation has begun.
        yield chunk([choice(i, None, finished.finish_reason)], moe_experts=finished.info)
        done[i] = finished
    if usage:
        total = {k: sum(c.usage()[k] for c in done if c is not None)
                 for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        yield chunk([], usage=total)
    yield b"data: [DONE]\n\n"
