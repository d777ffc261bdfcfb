"""Request bodies of the OpenAI endpoints, validated once where they enter.

Strict pydantic models: a field of the wrong type, or one this server does not know, is a 400 that names it;
a value out of range is a 422. OpenAI fields the library cannot honour (``n`` > 1, penalties, logprobs,
logit bias, ``echo``, ``suffix``, ``best_of``) are accepted only at their no-op values and otherwise refused
with a 400 saying so, never ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moe_experts.serve.errors import APIError

RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_long", "too_short",
                "string_too_short", "string_too_long"}
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.manual_seed accepts
MAX_ROUTE_TEXTS = 256
MAX_PROMPTS = 32  # prompts in one completion request (each is answered as its own choice, batched together)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


StopText = Annotated[str, Field(min_length=1)]


class _Generation(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # metadata only, as in the OpenAI API
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def stops(self) -> tuple[str, ...]:
        return () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def unsupported(self) -> list[tuple[str, str]]:
        """(field, why) for each OpenAI field set to a value this server cannot honour."""
        out = []
        if self.n not in (None, 1):
            out.append(("n", "one choice per request; send n requests (with different seeds) for more"))
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                out.append((name, "the experts generate with their card's repetition_penalty only; send 0 or leave "
                                  "it out"))
        if self.logit_bias:
            out.append(("logit_bias", "logit bias is not supported; leave it out"))
        if self.stream_options is not None and not self.stream:
            out.append(("stream_options", "applies only with stream: true"))
        return out


class ChatRequest(_Generation):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.logprobs or self.top_logprobs is not None:
            out.append(("logprobs", "log-probabilities are not returned by this server; leave it out"))
        if self.max_tokens is not None and self.max_completion_tokens not in (None, self.max_tokens):
            out.append(("max_completion_tokens", "max_tokens and max_completion_tokens differ; send one of them"))
        return out

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def text(self) -> str:
        """The conversation as the one text the router reads and the expert continues.

        The starter experts are plain language models, so every turn's text is kept, in order, one paragraph
        each; a single user message is sent unchanged.
        """
        return "\n\n".join(m.text() for m in self.messages)


class CompletionRequest(_Generation):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.echo:
            out.append(("echo", "the prompt is not echoed; leave echo out"))
        if self.suffix is not None:
            out.append(("suffix", "insertion (suffix) is not supported; leave it out"))
        if self.best_of not in (None, 1):
            out.append(("best_of", "best_of is not supported; leave it out"))
        if self.logprobs is not None:
            out.append(("logprobs", "log-probabilities are not returned by this server; leave it out"))
        return out

    def new_tokens(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str]:
        """Every prompt; each gets its own choice (``index`` in order), as in the OpenAI API."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class RouteRequest(_Strict):
    texts: Annotated[list[str], Field(min_length=1, max_length=MAX_ROUTE_TEXTS)]


def parse(model: type[_Strict], body: bytes) -> Any:
    """The validated request, or the APIError (400 or 422) that names the first problem."""
    try:
        request = model.model_validate_json(body)
    except ValidationError as exc:
        raise _as_api_error(exc) from None
    problems = request.unsupported() if hasattr(request, "unsupported") else []
    if problems:
        field, why = problems[0]
        raise APIError(400, f"`{field}`: not supported by this server: {why}", param=field,
                       code="unsupported_parameter")
    return request


def _as_api_error(exc: ValidationError) -> APIError:
    errors = exc.errors(include_url=False)
    # a value that fits one member of a union (``stop``: a string or a list) but breaks its range is a 422,
    # whatever the other members said; otherwise the deepest error is the one that names the real problem
    err = next((e for e in errors if e["type"] in RANGE_ERRORS), None) or max(errors, key=lambda e: len(e["loc"]))
    kind = err["type"]
    loc = ".".join(str(p) for p in _path(err["loc"]))
    if kind == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {err['msg']}", code="invalid_json")
    if not loc:
        return APIError(400, "the body must be a JSON object", code="invalid_json")
    if kind == "missing":
        return APIError(400, f"`{loc}` is required", param=loc, code="missing_field")
    if kind == "extra_forbidden":
        return APIError(400, f"`{loc}`: unknown or unsupported field; this server does not accept it", param=loc,
                        code="unknown_parameter")
    status, code = (422, "invalid_value") if kind in RANGE_ERRORS else (400, "invalid_type")
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) and len(repr(got)) <= 80 else type(got).__name__
    return APIError(status, f"`{loc}`: {err['msg'].lower()}, got {shown}", param=loc, code=code)


_UNION_TAG = re.compile(r"[\[\-]|^(str|int|float|bool|list|dict|TextPart)$")


def _path(loc: tuple[Any, ...]) -> list[Any]:
    """The field path of an error, without the names pydantic gives union members (``constrained-str``)."""
    out = []
    for part in loc:
        if isinstance(part, str) and _UNION_TAG.search(part):
            continue
        out.append(part)
    return out
