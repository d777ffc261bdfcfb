"""``moe-experts ask``: route requests, then generate with the chosen expert(s).

Many requests are answered in one process: every request is routed in one
batch, experts are loaded once, and top-1 requests are grouped by expert and
generated in batches. With ``top_k > 1`` the k most probable experts' next-token
distributions are mixed token by token, weighted by the posterior (c-BTM).

A JSONL batch is read line by line (``read_request_lines``): a line that cannot be
answered becomes a ``RejectedRequest`` in its place, and the others are still answered.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moe_experts.errors import RequestError
from moe_experts.inference.generate import Generation, GenerationSettings, generate, generate_mixture
from moe_experts.modeling.checkpoints import LoadedModel, check_shared_vocabulary
from moe_experts.modeling.stages import Setup, load_expert
from moe_experts.routing.doc_router import DocRouter, RoutingDecision

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 100_000


@dataclass(frozen=True)
class Request:
    text: str
    id: str | None = None


@dataclass(frozen=True)
class Answer:
    request: Request
    decision: RoutingDecision
    experts: tuple[tuple[str, float], ...]  # who generated, with mixture weights (one entry at top-1)
    generation: Generation
    routing_seconds: float  # this request's share of routing the batch

    def to_json(self) -> dict[str, Any]:
        g = self.generation
        return {
            "id": self.request.id,
            "decision": self.decision.to_json(),
            "experts": [{"name": n, "weight": round(w, 6)} for n, w in self.experts],
            "text": g.text,
            "new_tokens": g.new_tokens,
            "finish_reason": g.finish_reason,
            "timings": {
                "routing_ms": round(1000 * self.routing_seconds, 3),
                "generation_ms": round(1000 * g.seconds, 3),
                "tokens_per_second": round(g.new_tokens / g.seconds, 2) if g.seconds > 0 else None,
            },
        }


def check_request(text: str, *, where: str = "`text`", max_bytes: int = MAX_REQUEST_BYTES) -> str:
    """The request text, or a RequestError that names the problem and the fix."""
    problem = _text_problem(text, where=where, max_bytes=max_bytes)
    if problem is not None:
        raise RequestError(problem[1], hint=problem[2])
    return text


def decode_request(data: bytes, *, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"{where}: {_not_utf8(data, exc)}", hint=UTF8_HINT) from None


UTF8_HINT = "re-encode the input as UTF-8 (e.g. iconv -t UTF-8)"
LINE_HINT = 'one JSON object per line: {"text": "...", "id": "..."}'


@dataclass(frozen=True)
class RejectedRequest:
    """A line of a request batch that cannot be answered, and why; it keeps its place among the answers.

    ``kind`` is stable for programs to match on: not_utf8, not_json, not_an_object, invalid_id,
    duplicate_id, missing_text, text_not_a_string, empty_text, too_large.
    """

    id: str  # the line's id when it gave a usable one, else its line number (the default id)
    line: int  # 1-based line number in the batch
    kind: str
    message: str
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "line": self.line,
                "error": {"type": self.kind, "message": self.message, "hint": self.hint}}


def read_request_lines(
    data: bytes, *, where: str, max_bytes: int = MAX_REQUEST_BYTES
) -> list[Request | RejectedRequest]:
    """Every non-blank line of a JSONL batch as a Request, or as a RejectedRequest saying what is wrong with it.

    One bad line never stops the others. A line's ``id`` must be a non-empty string; a line without one gets
    its line number. An id already used by an earlier line (given, or a line number taken by default) is
    refused on the later line, so that every answer's id is unique. Raises RequestError only when the batch
    holds no line at all.
    """
    _check_max_bytes(max_bytes)
    items: list[Request | RejectedRequest] = []
    used: dict[str, int] = {}  # id -> the line that claimed it first
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte-order mark some editors write; not part of the first object
    # JSONL separates records by \n only: str.splitlines() would also split inside a JSON string at U+2028.
    for n, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.removesuffix(b"\r")
        if not raw.strip():
            continue
        items.append(_read_line(raw, n, f"{where}:{n}", max_bytes, used))
    if not items:
        raise RequestError(f"{where} holds no request", hint=LINE_HINT)
    return items


def _read_line(raw: bytes, n: int, where: str, max_bytes: int, used: dict[str, int]) -> Request | RejectedRequest:
    def reject(kind: str, message: str, hint: str | None = LINE_HINT, id_: str = str(n)) -> RejectedRequest:
        return RejectedRequest(id=id_, line=n, kind=kind, message=f"{where}: {message}", hint=hint)

    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return reject("not_utf8", _not_utf8(raw, exc), UTF8_HINT)
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return reject("not_json", f"not JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:
        return reject("not_json", "not JSON (nested too deeply)")
    if not isinstance(row, dict):
        return reject("not_an_object", f"a JSON {_json_kind(row)}, not an object")
    id_ = str(n)
    if "id" in row:
        given = row["id"]
        if not isinstance(given, str) or not given.strip():
            shown = json.dumps(given, ensure_ascii=False)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            got = "null" if given is None else f"a blank string {shown}" if isinstance(given, str) \
                else f"a JSON {_json_kind(given)} {shown}"
            return reject("invalid_id", f"'id' must be a non-empty string, got {got}",
                          'quote it ("id": "7"), or leave \'id\' out to use the line number')
        id_ = given
    if id_ in used:
        default = "" if "id" in row else " (the line number, this line's default id)"
        return reject("duplicate_id", f"id {id_!r}{default} is already used by line {used[id_]}; "
                      f"that line keeps it", "give every line its own id", id_=id_)
    used[id_] = n
    if "text" not in row:
        return reject("missing_text", "no 'text' field", id_=id_)
    text = row["text"]
    if not isinstance(text, str):
        return reject("text_not_a_string", f"'text' must be a string, got a JSON {_json_kind(text)}", id_=id_)
    problem = _text_problem(text, where=where, max_bytes=max_bytes)
    if problem is not None:
        kind, message, hint = problem
        if kind == "empty_text":
            hint = "give the line the question's text, or delete the line"
        return RejectedRequest(id=id_, line=n, kind=kind, message=message, hint=hint)
    return Request(text, id=id_)


def _text_problem(text: str, *, where: str, max_bytes: int) -> tuple[str, str, str] | None:
    """(kind, message, hint) for a request text that cannot be answered, or None."""
    _check_max_bytes(max_bytes)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        # argv bytes that are not UTF-8 arrive as lone surrogates (surrogateescape); so do JSON "\ud800" escapes
        return ("not_utf8", f"{where}: the request is not valid UTF-8 (bad byte at character {exc.start})",
                "re-encode the text as UTF-8 (e.g. iconv -t UTF-8)")
    if not text.strip():
        return ("empty_text", f"{where}: the request is empty",
                "send the question's text (`text`; on the command line - reads it from stdin)")
    if size > max_bytes:
        return ("too_large", f"{where}: the request is {size:,} bytes; the limit is {max_bytes:,}",
                "send a shorter text (routing reads all of it; the experts' context is far smaller), "
                "or raise the limit (`max_bytes`)")
    return None


def _check_max_bytes(max_bytes: int) -> None:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise RequestError(f"`max_bytes` must be a positive whole number of bytes, got {max_bytes!r}",
                           hint=f"use at least 1 (the default is {MAX_REQUEST_BYTES:,})")


def _not_utf8(data: bytes, exc: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"


def _json_kind(value: Any) -> str:
    kinds = ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"), (list, "array"), (dict, "object"))
    return "null" if value is None else next((name for t, name in kinds if isinstance(value, t)), type(value).__name__)


class ExpertPool:
    """Experts loaded on first use and kept for the rest of the process."""

    def __init__(self, setup: Setup, device: str = "cpu") -> None:
        self.setup, self.device = setup, device
        self._loaded: dict[str, LoadedModel] = {}

    def get(self, name: str) -> LoadedModel:
        if name not in self._loaded:
            self.setup.registry.by_name(name)  # an unknown name is refused with the cards' names, not a missing folder
            self._loaded[name] = load_expert(self.setup, name, device=self.device)
            logger.debug("loaded expert %s", name)
        return self._loaded[name]


def check_ask(setup: Setup, *, top_k: int = 1, expert: str | None = None) -> None:
    """Refuse ``top_k`` and ``expert`` values the cards rule out, before any model or router loads."""
    check_expert(setup, expert)
    n = len(setup.registry.names)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n:
        raise RequestError(f"`top_k` must be between 1 and {n} (the number of experts), got {top_k!r}",
                           hint="use 1 for the single most probable expert")


def check_expert(setup: Setup, name: str | None) -> None:
    if name is not None and name not in setup.registry.names:
        raise RequestError(
            f"`expert`: unknown expert '{name}'; the cards declare: {', '.join(setup.registry.names)}",
            hint="pass one of those names, or add a card for it in " + setup.registry.source_dir,
        )


def ask(
    setup: Setup,
    router: DocRouter,
    requests: Sequence[Request],
    *,
    top_k: int = 1,
    expert: str | None = None,
    overrides: dict[str, Any] | None = None,
    explain: bool = False,
    pool: ExpertPool | None = None,
    batch_size: int = 8,
) -> list[Answer]:
    """Route every request, then answer each with its expert (or its top-k mixture)."""
    check_ask(setup, top_k=top_k, expert=expert)
    pool = pool or ExpertPool(setup)
    overrides = overrides or {}
    decisions, seconds = router.route([r.text for r in requests], explain=explain)
    per_request = seconds / max(len(requests), 1)
    plans: list[tuple[tuple[str, float], ...]] = []
    for d in decisions:
        if expert is not None:
            plans.append(((expert, 1.0),))
        elif top_k == 1 or d.abstained:
            # an abstained request goes to the fallback alone: mixing in the guesses it doubted defeats abstaining
            plans.append(((d.expert, 1.0),))
        else:
            plans.append(tuple(d.top_k(top_k)))

    answers: dict[int, Answer] = {}
    by_expert: dict[str, list[int]] = defaultdict(list)
    for i, plan in enumerate(plans):
        if len(plan) == 1:
            by_expert[plan[0][0]].append(i)
    for name, idx in by_expert.items():
        loaded = pool.get(name)
        settings = _settings(setup, name, overrides)
        outs = generate(loaded.model, loaded.tokenizer, [requests[i].text for i in idx], settings,
                        batch_size=batch_size)
        for i, out in zip(idx, outs):
            answers[i] = Answer(requests[i], decisions[i], plans[i], out, per_request)
    for i, plan in enumerate(plans):
        if len(plan) > 1:
            names = [n for n, _ in plan]
            loaded = [pool.get(n) for n in names]
            check_shared_vocabulary({n: m.tokenizer for n, m in zip(names, loaded)})
            out = generate_mixture([m.model for m in loaded], [w for _, w in plan], loaded[0].tokenizer,
                                   requests[i].text, _settings(setup, names[0], overrides))
            answers[i] = Answer(requests[i], decisions[i], plan, out, per_request)
    return [answers[i] for i in range(len(requests))]


def _settings(setup: Setup, name: str, overrides: dict[str, Any]) -> GenerationSettings:
    return GenerationSettings.from_card(setup.registry.by_name(name).generation, **overrides)
