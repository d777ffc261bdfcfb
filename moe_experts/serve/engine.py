"""What the server answers with: the ``MoE`` object's router and experts, loaded once, fed by one batch worker.

Model names: ``auto`` (the document router's top-1 expert), ``auto-mix`` (the posterior-weighted top-k
mixture), each expert's name (that expert, the decision still computed and returned), and ``token-moe``
when a token-level MoE is built. Requests are queued (``submit``) and answered by ``serve.batcher``:
routed in batches, then decoded in batches per lane (one expert, one mixture, or the token-level MoE)
by ``inference.batch``, each request with its own settings. The experts are chosen as ``inference.ask``
chooses them (``plan``). A streamed request passes ``on_text``: its text is handed on as tokens are
generated (``serve.pieces``). ``reload_router`` swaps in a retrained router between batches.

Where the experts share one Llama shape (the starter experts do: each is branched from the seed), their
weights are stacked at start (``inference.stacked``), and one batch serves requests for different
experts: each row is computed with its own expert, so eight concurrent requests spread over five experts
make one batch of eight instead of five small ones. A batch of one expert still runs on that expert's
own model.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from moe_experts.serve.errors import APIError

if TYPE_CHECKING:
    from moe_experts.api import MoE
    from moe_experts.inference.generate import Generation
    from moe_experts.serve.batcher import Batching, Job

logger = logging.getLogger(__name__)

AUTO, AUTO_MIX, TOKEN_MOE = "auto", "auto-mix", "token-moe"
# Windows the router embeds at once. A routing batch holds every request waiting, and MiniLM's attention
# scores for 64 windows of 256 tokens are 64 x 12 heads x 256 x 256 floats, about 200 MB for a moment (a
# computed size); the server's resident memory swung by 15% between readings while it embedded 64 at once.
EMBED_BATCH = 8


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
    """Everything loaded once at start, and the batch worker that uses it; ``submit`` is safe from any thread."""

    def __init__(self, moe: MoE, *, top_k: int = 2, max_bytes: int | None = None,
                 batching: Batching | None = None) -> None:
        from moe_experts.inference.ask import MAX_REQUEST_BYTES, ExpertPool
        from moe_experts.serve.batcher import Batcher, Batching
        from moe_experts.serve.metrics import Metrics

        self.moe = moe
        self.experts = list(moe.experts)
        self.top_k = min(top_k, len(self.experts))
        self.max_bytes = MAX_REQUEST_BYTES if max_bytes is None else max_bytes
        self.batching = batching or Batching()
        self.metrics = Metrics()
        began = time.perf_counter()
        self.router = moe.router()  # refused here, at start, when stale or missing
        self.router.embedder.batch_size = EMBED_BATCH
        self.router.route(["warm up"])  # loads the embedder and index now, not on the first request
        self.metrics.set_router(self.router_version)
        self._reload_lock = threading.Lock()
        self._pool = ExpertPool(moe.setup)
        self._limits = {name: _max_new_tokens([self._pool.get(name).model]) for name in self.experts}
        self._token = _load_token_moe(moe)
        if self._token is not None:
            self._limits[TOKEN_MOE] = _max_new_tokens([self._token.model])
        self._stack_index: dict[str, int] = {}
        self._stack = self._stack_experts() if self.batching.stack_experts else None
        self.load_seconds = time.perf_counter() - began
        self._batcher = Batcher(self, self.batching, self.metrics)

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

    @property
    def router_version(self) -> str:
        return self.router.folder.name if self.router.folder is not None else "unversioned"

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

    # ------------------------------------------------------------------ requests (any thread)
    def submit(self, model: str, text: str, settings: Settings, *, on_text: Callable[[str], None] | None = None,
               cancel: threading.Event | None = None, name: str = "") -> Future:
        """Queue ``text`` for ``model``; the future's result is a ``Completion``. The caller has checked the model,
        the settings and the text. Raises ``serve.errors.Overloaded`` when the queue is full.

        ``on_text`` receives the answer's final text piece by piece while it is generated (stop strings
        honoured); setting ``cancel`` takes the request out of its batch (``serve.pieces.Cancelled``).
        """
        from moe_experts.serve.batcher import Job

        job = Job(model=model, text=text, settings=settings, on_text=on_text, name=name)
        if cancel is not None:
            job.cancel = cancel
        return self._batcher.submit(job)

    def submit_all(self, model: str, texts: Sequence[str], settings: Settings, *, cancel: threading.Event,
                   name: str = "", on_text: Callable[[int, str], None] | None = None,
                   on_done: Callable[[int, Future], None] | None = None) -> list[Future]:
        """``submit`` every text (``on_text`` and ``on_done`` get its index), all or none: when the queue refuses
        one, ``cancel`` withdraws those already queued and the refusal is raised."""
        futures = []
        try:
            for i, text in enumerate(texts):
                emit = None if on_text is None else functools.partial(on_text, i)
                future = self.submit(model, text, settings, on_text=emit, cancel=cancel, name=name)
                if on_done is not None:
                    future.add_done_callback(functools.partial(on_done, i))
                futures.append(future)
        except APIError:
            cancel.set()
            raise
        return futures

    def submit_route(self, texts: Sequence[str]) -> Future:
        """Queue texts for routing only (they join the next routing batch); the result is their decisions."""
        from moe_experts.serve.batcher import ROUTE, Job

        return self._batcher.submit(Job(model=ROUTE, texts=list(texts)))

    def reload_router(self) -> dict[str, Any]:
        """Load the workspace's live router again and swap it in between two batches; requests are not dropped.

        The new router is loaded, checked and warmed up before the swap, so a router that fails to load
        (corrupted, or trained for another expert set) leaves the current one serving, and the error says why.
        """
        from moe_experts.routing.doc_router import DocRouter, router_dir

        with self._reload_lock:
            before = self.router_version
            began = time.perf_counter()
            try:
                fresh = DocRouter.load(router_dir(self.moe.workspace.root), self.moe.setup.registry)
                fresh.embedder.batch_size = EMBED_BATCH
                fresh.route(["warm up"])
            except Exception:
                self.metrics.reloads.labels("failed").inc()
                raise
            self.router = fresh  # one reference: the worker reads it once per routing batch
            self.metrics.set_router(self.router_version)
            self.metrics.reloads.labels("ok").inc()
            seconds = time.perf_counter() - began
            logger.info("router reloaded: %s -> %s in %.2f s", before, self.router_version, seconds)
            return {"previous": before, "version": self.router_version, "changed": before != self.router_version,
                    "seconds": round(seconds, 3)}

    def close(self) -> None:
        """Finish the queued requests and stop the batch worker."""
        self._batcher.stop()

    # ------------------------------------------------------------------ the batch worker's side
    def needs_routing(self, model: str) -> bool:
        """Whether a request for ``model`` gets a document decision (the token-level MoE routes inside itself)."""
        return model != TOKEN_MOE

    def plan(self, model: str, decision: Any) -> tuple[tuple[str, float], ...]:
        """Who generates a request for ``model``, with weights (as ``inference.ask`` decides it)."""
        if model == TOKEN_MOE:
            return ((TOKEN_MOE, 1.0),)
        if model in self.experts:
            return ((model, 1.0),)
        if model == AUTO or decision.abstained:
            # an abstained request goes to the fallback alone: mixing in the guesses it doubted defeats abstaining
            return ((decision.expert, 1.0),)
        return tuple(decision.top_k(self.top_k))

    def stacks(self, lane: tuple[str, ...]) -> bool:
        """Whether the lane's jobs can share a batch with other experts' (its expert's weights are stacked)."""
        return self._stack is not None and len(lane) == 1 and lane[0] in self._stack_index

    def _stack_experts(self) -> Any:
        """The weights of the largest set of experts that stack, for mixed batches, or None; the log says which
        experts are stacked and why any others are not."""
        from moe_experts.errors import ConfigError
        from moe_experts.inference.stacked import StackedExperts, stackable_groups
        from moe_experts.modeling.checkpoints import check_shared_vocabulary

        loaded = {n: self._pool.get(n) for n in self.experts}
        names, apart = stackable_groups({n: m.model for n, m in loaded.items()})
        if names:
            try:
                check_shared_vocabulary({n: loaded[n].tokenizer for n in names})
            except ConfigError as exc:  # tokenizers of their own: their requests cannot share rows
                names, apart = [], {n: f"the experts do not share one tokenizer ({exc.message})" for n in loaded}
        if not names:
            reasons = sorted(set(apart.values()))
            logger.info("requests for different experts are decoded in separate batches: %s", "; ".join(reasons))
            return None
        self._stack_index = {n: i for i, n in enumerate(names)}
        logger.info("experts stacked (%s): requests for different experts share batches%s", ", ".join(names),
                    "".join(f"; {n} is decoded apart ({why})" for n, why in apart.items()))
        return StackedExperts([loaded[n].model for n in names])

    def decode(self, lane: tuple[str, ...], jobs: Sequence[Job]) -> list[Completion | BaseException]:
        """Generate every job of one lane together (``inference.batch``), each with its own settings."""
        from moe_experts.modeling.checkpoints import check_shared_vocabulary

        if lane == (TOKEN_MOE,):
            assert self._token is not None
            models, tokenizer = [self._token.model], self._token.tokenizer
            defaults = self.moe.setup.registry.fallback.generation
        else:
            loaded = [self._pool.get(n) for n in lane]
            if len(loaded) > 1:
                check_shared_vocabulary({n: m.tokenizer for n, m in zip(lane, loaded)})
            models, tokenizer = [m.model for m in loaded], loaded[0].tokenizer
            defaults = self.moe.setup.registry.by_name(lane[0]).generation
        return self._generate(models, tokenizer, jobs, [defaults] * len(jobs), mixture=len(lane) > 1)

    def decode_stacked(self, jobs: Sequence[Job]) -> list[Completion | BaseException]:
        """Generate jobs for different single experts in one batch, each row with its own expert's weights."""
        assert self._stack is not None
        model = self._stack.bind([self._stack_index[j.lane[0]] for j in jobs])
        tokenizer = self._pool.get(jobs[0].lane[0]).tokenizer  # one vocabulary: checked when stacking
        defaults = [self.moe.setup.registry.by_name(j.lane[0]).generation for j in jobs]
        return self._generate([model], tokenizer, jobs, defaults, mixture=False,
                              eos_models=[self._pool.get(n).model for n in sorted({j.lane[0] for j in jobs})])

    def _generate(self, models: list[Any], tokenizer: Any, jobs: Sequence[Job], defaults: Sequence[Any], *,
                  mixture: bool, eos_models: list[Any] | None = None) -> list[Completion | BaseException]:
        from moe_experts.inference.batch import Row, decode_batch
        from moe_experts.inference.generate import GenerationSettings, encode_prompt, eos_ids_of, fit_context
        from moe_experts.serve.batcher import watch
        from moe_experts.serve.pieces import PieceStreamer

        rows, prompts = [], []
        for job, card in zip(jobs, defaults):
            s = job.settings
            settings = GenerationSettings.from_card(card, max_new_tokens=s.max_tokens, temperature=s.temperature,
                                                    top_p=s.top_p, seed=s.seed)
            max_new, budget = fit_context(models, settings.max_new_tokens)
            ids, cut = encode_prompt(tokenizer, job.text, budget)
            streamer = PieceStreamer(tokenizer, s.stop, job.on_text, job.cancel) \
                if job.on_text is not None or s.stop else None
            weights = [w for _, w in job.plan] if mixture else ()
            rows.append(Row(ids, replace(settings, max_new_tokens=max_new), weights, watch(job, streamer)))
            prompts.append((len(ids), cut))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = eos_ids_of(tokenizer, eos_models or models)
        outs = decode_batch(models, tokenizer, rows, eos_ids=eos, pad_id=pad)
        results: list[Completion | BaseException] = []
        for job, out, (n_prompt, cut) in zip(jobs, outs, prompts):
            if isinstance(out, BaseException):
                results.append(out)
                continue
            results.append(_completion(out, job.settings.stop, self._info(job), n_prompt, cut))
        return results

    def _info(self, job: Job) -> dict[str, Any]:
        """The ``moe_experts`` field: who generated and why."""
        if job.model == TOKEN_MOE:
            return {"expert": None, "posterior": None, "abstained": False, "experts": [],
                    "reason": "token-level MoE: every token is routed inside its layers"}
        d = job.decision
        info: dict[str, Any] = {"expert": job.plan[0][0], "posterior": {k: round(v, 6) for k, v in
                                d.posterior.items()}, "reason": d.reason, "abstained": d.abstained,
                                "experts": [{"name": n, "weight": round(w, 6)} for n, w in job.plan]}
        if job.model in self.experts:
            info["reason"] = f"model '{job.model}' names this expert; the router would choose {d.expert} ({d.reason})"
        return info


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


def _max_new_tokens(models: Sequence[Any]) -> int:
    from moe_experts.inference.generate import fit_context

    return fit_context(models, 10**9)[0]


def _completion(g: Generation, stop: tuple[str, ...], info: dict[str, Any], prompt_tokens: int,
                cut: bool) -> Completion:
    finish = "length" if g.finish_reason == "length" else "stop"  # eos, or a stop string ended the row
    hits = [i for i in (g.text.find(s) for s in stop) if i >= 0]
    text = g.text
    if hits:
        text, finish = text[: min(hits)], "stop"
    return Completion(text, finish, prompt_tokens, g.new_tokens, {**info, "prompt_truncated": cut})
