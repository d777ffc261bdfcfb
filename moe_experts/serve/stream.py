"""Streaming an answer as it is generated: text pieces from the generation thread to server-sent events.

``PieceStreamer`` follows transformers' ``BaseStreamer`` protocol (``put`` the prompt, then each token;
``end``), so ``inference.generate`` feeds it from ``model.generate`` and from the mixture loop alike. It
hands on only text that is final: nothing past the first stop string, and nothing that could still turn
into one (a stop string split across tokens is held back until the next token settles it). When the
client goes away, ``cancel`` is set and the next ``put`` raises ``Cancelled``, which ends generation and
releases the engine's lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi.responses import StreamingResponse

if TYPE_CHECKING:
    from moe_experts.serve.engine import Completion, Engine, Settings

logger = logging.getLogger(__name__)


class Cancelled(Exception):
    """The client disconnected; generation stops at the next token (``tokens``: how many were generated)."""

    def __init__(self, tokens: int) -> None:
        super().__init__(tokens)
        self.tokens = tokens


class PieceStreamer:
    """Decodes the tokens so far after each one and calls ``emit`` with the text that became final."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], emit: Callable[[str], None],
                 cancel: threading.Event) -> None:
        self.tokenizer, self.stops, self.emit, self.cancel = tokenizer, tuple(stops), emit, cancel
        self._prompt_seen = False
        self._ids: list[int] = []
        self._sent = 0  # characters of the decoded answer handed on so far
        self._stopped = False  # a stop string was seen: the rest is generated (as without streaming) but not sent

    def put(self, value: Any) -> None:
        if self.cancel.is_set():
            raise Cancelled(len(self._ids))
        if not self._prompt_seen:  # the first call carries the prompt's ids, as in model.generate
            self._prompt_seen = True
            return
        self._ids += [int(t) for t in value.reshape(-1).tolist()]
        if self._stopped:
            return
        text = self.tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a token ended inside a UTF-8 character: wait for the rest of it
            return
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            final, self._stopped = min(hits), True
        else:
            final = len(text) - held_back(text, self.stops)
        if final > self._sent:
            self.emit(text[self._sent:final])
            self._sent = final

    def end(self) -> None:
        pass


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


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
                    from moe_experts.serve.app import _usage

                    yield chunk([], usage=_usage(done))
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
