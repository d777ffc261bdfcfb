"""What the server answers with: the ``MoE`` object's router and experts, loaded once, behind one lock.

Model names: ``auto`` (the document router's top-1 expert), ``auto-mix`` (the posterior-weighted top-k
mixture), each expert's name (that expert, the decision still computed and returned), and ``token-moe``
when a token-level MoE is built. Generation goes through ``inference.ask.ask`` (the call ``MoE.generate``
makes, which also takes ``top_p``) with an expert pool loaded at start; one request generates at a time.
A streamed request passes ``on_text``: its text is handed on as tokens are generated (``serve.pieces``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moe_experts.serve.errors import APIError

if TYPE_CHECKING:
    from moe_experts.api import MoE
    from moe_experts.inference.generate import Generation

logger = logging.getLogger(__name__)

AUTO, AUTO_MIX, TOKEN_MOE = "auto", "auto-mix", "token-moe"


@dataclass(frozen=True)
class Settings:
    """One request's generation settings; None leaves the expert card's value."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str  # cut before the first stop string, if any
    finish_reason: str  # "stop" (eos or a stop string) or "length", as OpenAI names them
    prompt_tokens: int  # what the model read, after the prompt was fitted into its context
    completion_tokens: int
    info: dict[str, Any]  # the ``moe_experts`` field: expert, posterior, reason, ...

    def usage(self) -> dict[str, int]:
        """OpenAI's ``usage`` object."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class Engine:
    """Everything loaded once at start; ``complete`` and ``route`` are safe to call from many threads."""

    def __init__(self, moe: MoE, *, top_k: int = 2, max_bytes: int | None = None) -> None:
        from moe_experts.inference.ask import MAX_REQUEST_BYTES, ExpertPool

        self.moe = moe
        self.experts = list(moe.experts)
        self.top_k = min(top_k, len(self.experts))
        self.max_bytes = MAX_REQUEST_BYTES if max_bytes is None else max_bytes
        self._lock = threading.Lock()
        began = time.perf_counter()
        router = moe.router()  # refused here, at start, when stale or missing
        router.route(["warm up"])  # loads the embedder and index now, not on the first request
        self._pool = ExpertPool(moe.setup)
        self._limits = {name: _max_new_tokens([self._pool.get(name).model]) for name in self.experts}
        self._shared_vocab = _shared_vocabulary({n: self._pool.get(n).tokenizer for n in self.experts})
        self._token = _load_token_moe(moe)
        if self._token is not None:
            self._limits[TOKEN_MOE] = _max_new_tokens([self._token.model])
        self.load_seconds = time.perf_counter() - began

    # ------------------------------------------------------------------ models
    @property
    def models(self) -> list[str]:
        names = [AUTO]
        if self.top_k > 1:
            names.append(AUTO_MIX)
        names += self.experts
        if self._token is not None:
            names.append(TOKEN_MOE)
        return names

    def check_model(self, model: str) -> None:
        if model not in self.models:
            hint = "" if self._token is not None or model != TOKEN_MOE else \
                " (no token-level MoE is built in this workspace: `moe-experts train-router --kind token`)"
            raise APIError(404, f"model '{model}' does not exist{hint}; available: {', '.join(self.models)}",
                           param="model", code="model_not_found")

    def check_settings(self, model: str, settings: Settings) -> None:
        """Refuse what the chosen experts cannot do before anything runs (422, naming the limit)."""
        from moe_experts.errors import RequestError
        from moe_experts.inference.generate import check_generation
        from moe_experts.serve.errors import from_library

        names = self.experts if model in (AUTO, AUTO_MIX) else [model]
        limit = min(self._limits[n] for n in names)
        if settings.max_tokens is not None and settings.max_tokens > limit:
            raise APIError(422, f"`max_tokens` is {settings.max_tokens}; model '{model}' generates at most {limit} "
                           "new tokens (its context keeps a quarter for the prompt)", param="max_tokens",
                           code="invalid_value")
        try:  # the bounds an expert card's generation block has
            check_generation(max_new_tokens=settings.max_tokens, temperature=settings.temperature,
                             top_p=settings.top_p)
        except RequestError as exc:
            name = exc.message.split(":", 1)[0]
            raise from_library(exc, param={"max_new_tokens": "max_tokens"}.get(name, name)) from None

    # ------------------------------------------------------------------ requests
    def route(self, texts: Sequence[str]) -> list[Any]:
        with self._lock:
            decisions, _ = self.moe.router().route(list(texts))
        return decisions

    def complete(self, model: str, text: str, settings: Settings, *, on_text: Callable[[str], None] | None = None,
                 cancel: threading.Event | None = None) -> Completion:
        """Answer ``text`` with ``model``; the caller has checked the model, the settings and the text.

        ``on_text`` receives the answer's final text piece by piece while it is generated (stop strings
        honoured); setting ``cancel`` then stops generation with ``serve.pieces.Cancelled``. Pieces not
        handed on (held back, or all of them when the experts' tokenizers differ) are in the result's text.
        """
        overrides = {"max_new_tokens": settings.max_tokens, "temperature": settings.temperature,
                     "top_p": settings.top_p, "seed": settings.seed}
        with self._lock:
            streamer = self._streamer(model, settings.stop, on_text, cancel)
            if model == TOKEN_MOE:
                return self._complete_token(text, overrides, settings.stop, streamer)
            from moe_experts.inference.ask import Request, ask

            expert = model if model in self.experts else None
            top_k = self.top_k if model == AUTO_MIX else 1
            answer = ask(self.moe.setup, self.moe.router(), [Request(text, id="0")], top_k=top_k, expert=expert,
                         overrides=overrides, pool=self._pool, streamer=streamer)[0]
        d = answer.decision
        info: dict[str, Any] = {"expert": answer.experts[0][0], "posterior": {k: round(v, 6) for k, v in
                                d.posterior.items()}, "reason": d.reason, "abstained": d.abstained,
                                "experts": [{"name": n, "weight": round(w, 6)} for n, w in answer.experts]}
        if expert is not None:
            info["reason"] = f"model '{model}' names this expert; the router would choose {d.expert} ({d.reason})"
        loaded = [self._pool.get(n).model for n, _ in answer.experts]
        return _completion(answer.generation, self._pool.get(answer.experts[0][0]).tokenizer, loaded, text,
                           settings.stop, info, overrides["max_new_tokens"] or self._card_max_new(answer.experts))

    def _streamer(self, model: str, stop: tuple[str, ...], on_text: Callable[[str], None] | None,
                  cancel: threading.Event | None) -> Any:
        from moe_experts.serve.pieces import PieceStreamer

        if on_text is None:
            return None
        if model == TOKEN_MOE:
            assert self._token is not None
            tokenizer = self._token.tokenizer
        elif model in self.experts:
            tokenizer = self._pool.get(model).tokenizer
        elif self._shared_vocab:  # the router picks the expert inside ``ask``; any expert's tokenizer decodes it
            tokenizer = self._pool.get(self.experts[0]).tokenizer
        else:
            return None  # tokenizers differ: the answer is sent whole when it is done
        return PieceStreamer(tokenizer, stop, on_text, cancel or threading.Event())

    def _complete_token(self, text: str, overrides: dict[str, Any], stop: tuple[str, ...],
                        streamer: Any = None) -> Completion:
        from moe_experts.inference.generate import GenerationSettings, generate

        assert self._token is not None
        setup = self.moe.setup
        settings = GenerationSettings.from_card(setup.registry.fallback.generation, **overrides)
        out = generate(self._token.model, self._token.tokenizer, [text], settings, streamer=streamer)[0]
        info = {"expert": None, "posterior": None, "abstained": False, "experts": [],
                "reason": "token-level MoE: every token is routed inside its layers"}
        return _completion(out, self._token.tokenizer, [self._token.model], text, stop, info,
                           settings.max_new_tokens)

    def _card_max_new(self, experts: Sequence[tuple[str, float]]) -> int:
        return self.moe.setup.registry.by_name(experts[0][0]).generation.max_new_tokens


def _load_token_moe(moe: MoE) -> Any:
    """The token-level MoE when one is built for these experts, else None (and the log says why)."""
    from moe_experts.errors import MissingArtifactError, StaleArtifactError
    from moe_experts.inference.ask_token import check_token_ask, load_token_moe

    try:
        check_token_ask(moe.setup)
    except (MissingArtifactError, StaleArtifactError) as exc:
        logger.info("model %s not offered: %s", TOKEN_MOE, exc.message)
        return None
    loaded, _ = load_token_moe(moe.setup)
    return loaded


def _shared_vocabulary(tokenizers: dict[str, Any]) -> bool:
    from moe_experts.errors import ConfigError
    from moe_experts.modeling.checkpoints import check_shared_vocabulary

    try:
        check_shared_vocabulary(tokenizers)
    except ConfigError as exc:
        logger.info("streaming for auto and auto-mix sends the answer whole: %s", exc.message)
        return False
    return True


def _max_new_tokens(models: Sequence[Any]) -> int:
    from moe_experts.inference.generate import _fit_context

    return _fit_context(models, 10**9)[0]


def _completion(g: Generation, tokenizer: Any, models: Sequence[Any], text: str, stop: tuple[str, ...],
                info: dict[str, Any], max_new: int) -> Completion:
    from moe_experts.inference.generate import _encode, _fit_context

    _, budget = _fit_context(list(models), max_new)
    prompt_ids, cut = _encode(tokenizer, text, budget)
    info = {**info, "prompt_truncated": bool(cut)}
    finish = "stop" if g.finish_reason == "eos" else "length"
    hits = [i for i in (g.text.find(s) for s in stop) if i >= 0]
    full = g.text
    if hits:
        full, finish = full[: min(hits)], "stop"
    return Completion(full, finish, len(prompt_ids), g.new_tokens, info)
