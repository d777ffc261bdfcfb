"""What every evaluated system shares: the test documents, and the expensive work done once.

The ``EvalContext`` computes each model's per-token log-probabilities over every
domain once (the experts' are reused by the oracle, the router's top-1 and its
mixture), the router's decisions for every document (embeddings cached in the
workspace), and the models' generation speed and size.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moe_experts.errors import CheckpointError, MoeExpertsError
from moe_experts.evaluation.scoring import count_stream_windows, encode_documents, stream_logprobs, tokenizer_key
from moe_experts.modeling.checkpoints import LoadedModel
from moe_experts.modeling.flops import model_size
from moe_experts.modeling.stages import SEED, Setup, load_expert, tokens_seen
from moe_experts.progress import Progress
from moe_experts.workspace import MANIFEST, read_json

logger = logging.getLogger(__name__)

GENERATION_TOKENS = 32  # new tokens per prompt when measuring generation speed
LATENCY_REQUEST_CHARS = 400  # routing latency is measured on the first 400 characters of test documents
PROMPT_CHARS = 200  # generation speed: prompts of the first 200 characters (they fit a tiny model's context)


def expert_key(name: str) -> str:
    """The context's key for an expert's model: its stand-alone system and every routed system share it."""
    return f"expert:{name}"


@dataclass(frozen=True)
class EvalDocs:
    """One domain's test documents, as evaluated."""

    domain: str
    ids: list[str]
    texts: list[str]

    @property
    def bytes(self) -> np.ndarray:
        return np.array([len(t.encode("utf-8")) for t in self.texts], dtype=np.int64)


@dataclass
class ModelInfo:
    """What the context learnt about a model while it was loaded."""

    parameters: int
    active_parameters: int
    flops_per_token: int
    tokens_per_second: float | None
    tokenizer: Any


@dataclass(frozen=True)
class Unavailable:
    """Why a system cannot be evaluated in this workspace, and how to build what it needs."""

    reason: str
    hint: str


Loader = Callable[[str], LoadedModel]  # device -> loaded model


# ---------------------------------------------------------------------------- cost helpers
def manifest_of(folder: Path | None) -> dict[str, Any] | None:
    return read_json(folder / MANIFEST) if folder is not None and (folder / MANIFEST).exists() else None


def experts_training_tokens(ctx: EvalContext, names: list[str]) -> int | None:
    """Training tokens behind a set of starter experts: their seed's once, plus each branch's own.

    None when any of them is a pretrained model or was built before tokens were recorded.
    """
    seed = manifest_of(ctx.setup.workspace.model_dir(SEED))
    seen = [tokens_seen(m) if m else None for m in (manifest_of(ctx.setup.workspace.model_dir(n)) for n in names)]
    seed_seen = tokens_seen(seed) if seed else None
    if seed_seen is None or any(t is None for t in seen):
        return None
    return seed_seen + sum(t - seed_seen for t in seen)  # type: ignore[operator]


def _percentiles(ms: list[float]) -> tuple[float | None, float | None]:
    if not ms:
        return None, None
    return round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 99)), 3)


# ---------------------------------------------------------------------------- context
@dataclass
class EvalContext:
    """The test documents, and everything computed from them once and shared by the systems."""

    setup: Setup
    docs: dict[str, EvalDocs]  # domain -> documents, in report order
    device: str = "cpu"
    batch_size: int = 8
    speed_prompts: int = 4  # prompts per model for generation speed (0: not measured)
    latency_requests: int = 50  # single requests for routing latency (0: not measured)
    _logprobs: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    _info: dict[str, ModelInfo] = field(default_factory=dict)
    _streams: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict)  # (tokenizer key, domain) -> ids
    _extra: dict[str, Any] = field(default_factory=dict)
    _router: Any = None
    _router_error: Unavailable | None = None
    _decisions: dict[str, list[Any]] | None = None
    _routing_ms: tuple[float | None, float | None] | None = None
    _mixture_speed: dict[tuple[str, ...], float | None] = field(default_factory=dict)

    @property
    def domains(self) -> list[str]:
        return list(self.docs)

    def n_bytes(self, domain: str) -> np.ndarray:
        return self.docs[domain].bytes

    # ------------------------------------------------------------------ models
    def expert_loader(self, name: str) -> Loader:
        return lambda device: load_expert(self.setup, name, device)

    def model_logprobs(self, key: str, loader: Loader,
                       while_loaded: Callable[[LoadedModel], Any] | None = None) -> dict[str, list[np.ndarray]]:
        """Per-token log-probs of model ``key`` on every domain (computed once, then reused).

        ``while_loaded`` runs on the loaded model before it is freed (its result: ``extra(key)``),
        so a system that needs more than log-probs does not load the weights twice.
        """
        if key not in self._logprobs:
            loaded = loader(self.device)
            if while_loaded is not None:
                self._extra[key] = while_loaded(loaded)
            model, tokenizer = loaded.model, loaded.tokenizer
            context = getattr(model.config, "max_position_embeddings", None) or self.setup.preset.seq_len
            window = min(self.setup.preset.seq_len, context)
            streams = {d: self.encoded(tokenizer, d) for d in self.docs}
            total = sum(count_stream_windows(s, window) for s in streams.values())
            with Progress(f"scoring {key}", total=total, unit="window") as bar:
                self._logprobs[key] = {
                    d: stream_logprobs(model, s, pad_id=tokenizer.eos_token_id, window=window,
                                       batch_size=self.batch_size, progress=bar)
                    for d, s in streams.items()
                }
            size = model_size(model.config, window)
            total_p, active_p, flops = size.total_parameters, size.active_parameters, size.flops_per_token
            measured = sum(p.numel() for p in model.parameters())
            if measured != total_p:  # a config the formula does not know: fall back to counting
                total_p = active_p = measured
                flops = 2 * measured
            self._info[key] = ModelInfo(total_p, active_p, flops, self._tokens_per_second(model, tokenizer), tokenizer)
            del model, loaded
            gc.collect()
        return self._logprobs[key]

    def encoded(self, tokenizer: Any, domain: str) -> list[np.ndarray]:
        """The domain's documents as scored id streams; encoded once for every model with the same tokenizer."""
        key = tokenizer_key(tokenizer)
        if key is None:
            return encode_documents(tokenizer, self.docs[domain].texts)
        if (key, domain) not in self._streams:
            self._streams[(key, domain)] = encode_documents(tokenizer, self.docs[domain].texts)
        return self._streams[(key, domain)]

    def expert_logprobs(self) -> dict[str, dict[str, list[np.ndarray]]]:
        """Per-token log-probs of every expert on every domain (shared by the routed systems and the oracle)."""
        return {name: self.model_logprobs(expert_key(name), self.expert_loader(name)) for name in self.setup.registry.names}

    def experts_unavailable(self, names: list[str]) -> Unavailable | None:
        """Which of these experts are starters not trained yet (and how to train them), or None."""
        missing = [n for n in names if self.setup.registry.by_name(n).model.kind != "pretrained"
                   and not (self.setup.workspace.model_dir(n) / MANIFEST).exists()]
        if missing:
            return Unavailable(f"expert(s) not trained: {', '.join(missing)}", "build them with `moe-experts train experts`")
        return None

    def info(self, key: str) -> ModelInfo:
        return self._info[key]

    def extra(self, key: str) -> Any:
        return self._extra.get(key)

    def prompts(self, n: int, chars: int = LATENCY_REQUEST_CHARS) -> list[str]:
        """``n`` short requests spread over the domains: the first ``chars`` characters of test documents."""
        out: list[str] = []
        pools = [docs.texts for docs in self.docs.values()]
        i = 0
        while len(out) < n and any(i < len(p) for p in pools):
            out += [p[i][:chars] for p in pools if i < len(p)]
            i += 1
        return out[:n]

    def _tokens_per_second(self, model: Any, tokenizer: Any) -> float | None:
        """Greedy generation speed, one prompt at a time, exactly GENERATION_TOKENS new tokens each."""
        import torch

        prompts = self.prompts(self.speed_prompts, PROMPT_CHARS)
        if not prompts:
            return None
        context = getattr(model.config, "max_position_embeddings", None) or 10**9
        device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        tokens, seconds = 0, 0.0
        with torch.inference_mode():
            for i, text in enumerate([prompts[0], *prompts]):  # the first is a warm-up, not timed
                ids = tokenizer(text, return_tensors="pt").input_ids[:, -max(1, context - GENERATION_TOKENS):].to(device)
                started = time.perf_counter()
                out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=pad,
                                     min_new_tokens=GENERATION_TOKENS, max_new_tokens=GENERATION_TOKENS)
                if i > 0:
                    seconds += time.perf_counter() - started
                    tokens += out.shape[1] - ids.shape[1]
        return round(tokens / seconds, 2) if seconds > 0 else None

    def mixture_tokens_per_second(self, names: tuple[str, ...], weights: tuple[float, ...]) -> float | None:
        """Generation speed of a token-by-token mixture of experts (loaded together for the measurement)."""
        from moe_experts.inference.generate import GenerationSettings, generate_mixture

        if names not in self._mixture_speed:
            prompts = self.prompts(self.speed_prompts, PROMPT_CHARS)
            if not prompts:
                self._mixture_speed[names] = None
            else:
                loaded = [self.expert_loader(n)(self.device) for n in names]
                settings = GenerationSettings(max_new_tokens=GENERATION_TOKENS, temperature=0.0)
                models = [m.model for m in loaded]
                tokens, seconds = 0, 0.0
                for i, text in enumerate([prompts[0], *prompts]):
                    out = generate_mixture(models, list(weights), loaded[0].tokenizer, text, settings)
                    if i > 0:
                        tokens, seconds = tokens + out.new_tokens, seconds + out.seconds
                self._mixture_speed[names] = round(tokens / seconds, 2) if seconds > 0 else None
                del loaded, models
                gc.collect()
        return self._mixture_speed[names]

    # ------------------------------------------------------------------ document router
    def router(self) -> Any:
        """The workspace's document router, or raises the reason it cannot be used."""
        from moe_experts.routing.doc_router import DocRouter, router_dir, router_manifest

        if self._router is None and self._router_error is None:
            folder = router_dir(self.setup.workspace.root)
            if router_manifest(folder) is None:
                self._router_error = Unavailable(
                    "no document router in the workspace", "build it with `moe-experts train-router`"
                )
            else:
                try:
                    self._router = DocRouter.load(folder, self.setup.registry)
                except CheckpointError:
                    raise  # a corrupted router is refused loudly, never skipped as if it were merely missing
                except MoeExpertsError as exc:
                    self._router_error = Unavailable(f"the document router cannot be used: {exc.message}",
                                                     exc.hint or "retrain it with `moe-experts train-router --force`")
        if self._router_error is not None:
            raise RouterUnavailable(self._router_error)
        return self._router

    def router_unavailable(self) -> Unavailable | None:
        try:
            self.router()
        except RouterUnavailable as exc:
            return exc.why
        return None

    def decisions(self) -> dict[str, list[Any]]:
        """The router's decision for every test document, per domain (documents embedded once, cached)."""
        from moe_experts.routing.train_doc import embed_cached

        if self._decisions is None:
            router = self.router()
            ids = [i for docs in self.docs.values() for i in docs.ids]
            texts = [t for docs in self.docs.values() for t in docs.texts]
            vectors = embed_cached(self.setup, router.embedder, ids, texts, max_windows=router.max_windows)
            decisions = router.decisions(vectors, texts)
            self._decisions, start = {}, 0
            for d, docs in self.docs.items():
                self._decisions[d] = decisions[start : start + len(docs.ids)]
                start += len(docs.ids)
        return self._decisions

    def routing_latency(self) -> tuple[float | None, float | None]:
        """(p50, p99) milliseconds to route one request (embed + search + classifier), one at a time."""
        if self._routing_ms is None:
            router = self.router()
            router.warm_up()
            ms = []
            for text in self.prompts(self.latency_requests):
                _, seconds = router.route([text])
                ms.append(1000 * seconds)
            self._routing_ms = _percentiles(ms)
        return self._routing_ms


class RouterUnavailable(Exception):
    def __init__(self, why: Unavailable) -> None:
        super().__init__(why.reason)
        self.why = why
