"""Streaming an answer as it is generated: the generation side (text pieces out of the token stream).

``PieceStreamer`` watches one row of a batch (``inference.batch``): ``token`` is called with each new token,
and returns True once a stop string has appeared, which ends that row. It hands on only text that is
final: nothing past the first stop string, and nothing that could still turn into one (a stop string
split across tokens is held back until the next token settles it). When the client goes away, ``cancel``
is set and the next token raises ``Cancelled``, which takes that row out of its batch. ``serve.sse``
turns the pieces into server-sent events.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


class Cancelled(Exception):
    """The client disconnected; generation stops at the next token (``tokens``: how many were generated)."""

    def __init__(self, tokens: int) -> None:
        super().__init__(tokens)
        self.tokens = tokens


class PieceStreamer:
    """Decodes the tokens so far after each one and calls ``emit`` with the text that became final."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], emit: Callable[[str], None] | None,
                 cancel: threading.Event) -> None:
        self.tokenizer, self.stops, self.emit, self.cancel = tokenizer, tuple(stops), emit, cancel
        self._ids: list[int] = []
        self._sent = 0  # characters of the decoded answer handed on so far
        self._stopped = False  # a stop string was seen: nothing more is sent

    def token(self, token: int) -> bool:
        """Take one new token; True once the answer has reached a stop string (generation can end there)."""
        if self.cancel.is_set():
            raise Cancelled(len(self._ids))
        self._ids.append(token)
        if self._stopped:
            return True
        if self.emit is None and not self.stops:
            return False
        text = self.tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a token ended inside a UTF-8 character: wait for the rest of it
            return False
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            final, self._stopped = min(hits), True
        else:
            final = len(text) - held_back(text, self.stops)
        if final > self._sent:
            if self.emit is not None:
                self.emit(text[self._sent:final])
            self._sent = final
        return self._stopped


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest
