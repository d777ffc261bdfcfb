"""The systems the evaluator compares, behind one small interface.

A system turns the test documents of every domain into per-document scores
(``DocScores``) and says what it costs. Adding one (the token-level MoE, a
user's own checkpoint) means writing a ``System`` and listing it in
``default_systems``; the runner, the statistics and the report take it as is.

The ``EvalContext`` does the expensive, shared work once: each model's
per-token log-probabilities over every domain (the experts' are reused by the
oracle, the router's top-1 and its mixture), the router's decisions for every
document (embeddings cached in the workspace), and the models' generation speed.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from moe_experts.errors import MoeExpertsError
from moe_experts.evaluation.scoring import DocScores, count_windows, mixture_logprobs, scores_from_logprobs, token_logprobs
from moe_experts.modeling.checkpoints import LoadedModel, check_shared_vocabulary, load_checkpoint
from moe_experts.modeling.flops import model_size
from moe_experts.modeling.stages import GENERALIST, GENERALIST_PARAMS, SEED, Setup, load_expert, tokens_seen
from moe_experts.progress import Progress
from moe_experts.workspace import MANIFEST, read_json

logger = logging.getLogger(__name__)

GENERATION_TOKENS = 32  # new tokens per prompt when measuring generation speed
LATENCY_REQUEST_CHARS = 400  # routing latency is measured on the first 400 characters of test documents
PROMPT_CHARS = 200  # generation speed: prompts of the first 200 characters (they fit a tiny model's context)


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


@dataclass
class Unavailable:
    reason: str
    hint: str


class System(Protocol):
    name: str  # column name in the report
    kind: str  # dense | expert | routed | oracle | moe
    description: str

    def unavailable(self, ctx: EvalContext) -> Unavailable | None:
        """Why this system cannot be evaluated in this workspace (and how to build it), or None."""

    def scores(self, ctx: EvalContext) -> dict[str, DocScores]:
        """Per-document scores on every evaluated domain."""

    def cost(self, ctx: EvalContext) -> dict[str, Any]:
        """total_params, active_params, flops_per_token, routing_ms_p50/p99, tokens_per_second (None when unknown)."""


Loader = Callable[[str], LoadedModel]  # device -> loaded model


# ---------------------------------------------------------------------------- cost helpers
def _manifest(folder: Path | None) -> dict[str, Any] | None:
    return read_json(folder / MANIFEST) if folder is not None and (folder / MANIFEST).exists() else None


def experts_training_tokens(ctx: EvalContext, names: list[str]) -> int | None:
    """Training tokens behind a set of starter experts: their seed's once, plus each branch's own.

    None when any of them is a pretrained model or was built before tokens were recorded.
    """
    seed = _manifest(ctx.setup.workspace.model_dir(SEED))
    seen = [tokens_seen(m) if m else None for m in (_manifest(ctx.setup.workspace.model_dir(n)) for n in names)]
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
    setup: Setup
    docs: dict[str, EvalDocs]  # domain -> documents, in report order
    device: str = "cpu"
    batch_size: int = 8
    speed_prompts: int = 4  # prompts per model for generation speed (0: not measured)
    latency_requests: int = 50  # single requests for routing latency (0: not measured)
    _logprobs: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    _info: dict[str, ModelInfo] = field(default_factory=dict)
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
            texts = {d: docs.texts for d, docs in self.docs.items()}
            total = sum(count_windows(tokenizer, t, window) for t in texts.values())
            with Progress(f"scoring {key}", total=total, unit="window") as bar:
                self._logprobs[key] = {
                    d: token_logprobs(model, tokenizer, t, window=window, batch_size=self.batch_size, progress=bar)
                    for d, t in texts.items()
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
        from moe_experts.routing.doc_router import DocRouter, router_dir

        if self._router is None and self._router_error is None:
            folder = router_dir(self.setup.workspace.root)
            if not (folder / "router.json").exists():
                self._router_error = Unavailable(
                    "no document router in the workspace", "build it with `moe-experts train-router`"
                )
            else:
                try:
                    self._router = DocRouter.load(folder, self.setup.registry)
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
            vectors = embed_cached(self.setup, router.embedder, ids, texts)
            decisions = router.decisions(vectors)
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


# ---------------------------------------------------------------------------- systems
@dataclass
class ModelSystem:
    """One causal LM scored on every domain: the generalists, the seed, an expert, the token-level MoE."""

    name: str
    kind: str
    description: str
    key: str  # model key in the context (shared with routed systems for experts)
    folder: Path | None  # checked for existence; None for a card's pretrained model
    hint: str  # how to build it when missing
    loader: Loader | None = None

    def unavailable(self, ctx: EvalContext) -> Unavailable | None:
        if self.folder is not None and not (self.folder / MANIFEST).exists() and not (self.folder / "config.json").exists():
            return Unavailable(f"not in the workspace ({self.folder})", self.hint)
        return None

    def _loader(self, ctx: EvalContext) -> Loader:
        if self.loader is not None:
            return self.loader
        folder = self.folder
        assert folder is not None
        return lambda device: load_checkpoint(folder, device=device)

    def scores(self, ctx: EvalContext) -> dict[str, DocScores]:
        logprobs = ctx.model_logprobs(self.key, self._loader(ctx))
        return {d: scores_from_logprobs(logprobs[d], ctx.n_bytes(d)) for d in ctx.domains}

    def cost(self, ctx: EvalContext) -> dict[str, Any]:
        info = ctx.info(self.key)
        return {"total_params": info.parameters, "active_params": info.active_parameters,
                "flops_per_token": info.flops_per_token, "routing_ms_p50": None, "routing_ms_p99": None,
                "tokens_per_second": info.tokens_per_second, "training_tokens": self.training_tokens(ctx)}

    def training_tokens(self, ctx: EvalContext) -> int | None:
        """Training tokens behind the weights scored (None: a pretrained model, or an older manifest)."""
        manifest = _manifest(self.folder)
        return tokens_seen(manifest) if manifest else None


def _expert_keys(ctx: EvalContext) -> dict[str, str]:
    return {name: f"expert:{name}" for name in ctx.setup.registry.names}


def _expert_scores(ctx: EvalContext) -> dict[str, dict[str, list[np.ndarray]]]:
    """Per-token log-probs of every expert on every domain."""
    return {name: ctx.model_logprobs(key, ctx.expert_loader(name)) for name, key in _expert_keys(ctx).items()}


def _experts_unavailable(ctx: EvalContext, names: list[str]) -> Unavailable | None:
    missing = [n for n in names if ctx.setup.registry.by_name(n).model.kind != "pretrained"
               and not (ctx.setup.workspace.model_dir(n) / MANIFEST).exists()]
    if missing:
        return Unavailable(f"expert(s) not trained: {', '.join(missing)}", "build them with `moe-experts train experts`")
    return None


@dataclass
class OracleSystem:
    """Each document scored by its own domain's expert: the best a document router could do."""

    name: str = "oracle"
    kind: str = "oracle"
    description: str = "each document scored by its own domain's expert (an upper bound for routing)"

    def unavailable(self, ctx: EvalContext) -> Unavailable | None:
        return _experts_unavailable(ctx, [ctx.setup.registry.by_domain(d).name for d in ctx.domains])

    def scores(self, ctx: EvalContext) -> dict[str, DocScores]:
        out = {}
        for d in ctx.domains:
            name = ctx.setup.registry.by_domain(d).name
            out[d] = scores_from_logprobs(ctx.model_logprobs(f"expert:{name}", ctx.expert_loader(name))[d], ctx.n_bytes(d))
        return out

    def cost(self, ctx: EvalContext) -> dict[str, Any]:
        names = [ctx.setup.registry.by_domain(d).name for d in ctx.domains]
        infos = [ctx.info(f"expert:{n}") for n in names]
        return {"total_params": sum({id(i): i.parameters for i in infos}.values()),
                "active_params": max(i.active_parameters for i in infos),
                "flops_per_token": max(i.flops_per_token for i in infos), "routing_ms_p50": None,
                "routing_ms_p99": None, "tokens_per_second": None,
                "training_tokens": experts_training_tokens(ctx, names)}


@dataclass
class DocRoutedSystem:
    """The document router: top-1 (the chosen expert scores the document) or the top-k posterior mixture.

    The router reads the whole test document (as a request) and the chosen expert(s) then
    score it. A request the router abstains on goes to the fallback alone, as ``ask`` does.
    """

    top_k: int = 1
    name: str = ""
    kind: str = "routed"
    description: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"doc-top{self.top_k}"
        self.description = self.description or (
            "document router, top-1 expert" if self.top_k == 1
            else f"document router, token-by-token mixture of the top-{self.top_k} experts weighted by the posterior"
        )

    def unavailable(self, ctx: EvalContext) -> Unavailable | None:
        why = ctx.router_unavailable() or _experts_unavailable(ctx, ctx.setup.registry.names)
        if why is None and self.top_k > len(ctx.setup.registry.names):
            why = Unavailable(f"top-{self.top_k} needs at least {self.top_k} experts", "lower --top-k")
        return why

    def plans(self, ctx: EvalContext) -> dict[str, list[tuple[tuple[str, float], ...]]]:
        out = {}
        for d, decisions in ctx.decisions().items():
            out[d] = [((x.expert, 1.0),) if self.top_k == 1 or x.abstained else tuple(x.top_k(self.top_k))
                      for x in decisions]
        return out

    def scores(self, ctx: EvalContext) -> dict[str, DocScores]:
        experts = _expert_scores(ctx)
        if self.top_k > 1:
            check_shared_vocabulary({n: ctx.info(f"expert:{n}").tokenizer for n in experts})
        out = {}
        for d, plans in self.plans(ctx).items():
            logprobs = []
            for i, plan in enumerate(plans):
                if len(plan) == 1:
                    logprobs.append(experts[plan[0][0]][d][i])
                else:
                    logprobs.append(mixture_logprobs([experts[n][d][i] for n, _ in plan], [w for _, w in plan]))
            out[d] = scores_from_logprobs(logprobs, ctx.n_bytes(d))
        return out

    def cost(self, ctx: EvalContext) -> dict[str, Any]:
        infos = [ctx.info(f"expert:{n}") for n in ctx.setup.registry.names]
        p50, p99 = ctx.routing_latency() if ctx.latency_requests else (None, None)
        one = max(infos, key=lambda i: i.active_parameters)
        if self.top_k == 1:
            speeds = [i.tokens_per_second for i in infos if i.tokens_per_second]
            speed = round(float(np.mean(speeds)), 2) if speeds else None
        else:
            names = tuple(ctx.setup.registry.names[: self.top_k])
            speed = ctx.mixture_tokens_per_second(names, tuple(1.0 / self.top_k for _ in names)) if ctx.speed_prompts else None
        embedder = ctx.router().embedder.model
        return {"total_params": sum(i.parameters for i in infos),
                "router_params": sum(p.numel() for p in embedder.parameters()),  # runs once per request
                "active_params": self.top_k * one.active_parameters,
                "flops_per_token": self.top_k * one.flops_per_token,
                "routing_ms_p50": p50, "routing_ms_p99": p99, "tokens_per_second": speed,
                "training_tokens": experts_training_tokens(ctx, ctx.setup.registry.names)}


LOAD_BLOCKS_PER_DOMAIN = 16  # test blocks per domain for the token-level MoE's expert-load heatmap


@dataclass
class TokenMoESystem(ModelSystem):
    """The token-level sparse MoE (routers/token/): a causal LM, plus where each domain's tokens go."""

    def scores(self, ctx: EvalContext) -> dict[str, DocScores]:
        logprobs = ctx.model_logprobs(self.key, self._loader(ctx), while_loaded=lambda m: _expert_load(ctx, m))
        return {d: scores_from_logprobs(logprobs[d], ctx.n_bytes(d)) for d in ctx.domains}

    def expert_load(self, ctx: EvalContext) -> dict[str, Any]:
        """Per layer, each expert's share of every domain's test tokens (top-k slots), entropy, dead experts."""
        return ctx.extra(self.key)

    def training_tokens(self, ctx: EvalContext) -> int | None:
        """The experts' training tokens, plus the merged model's own training."""
        manifest = _manifest(self.folder)
        if manifest is None:
            return None
        experts = experts_training_tokens(ctx, [n for n in manifest.get("experts", []) if n != SEED])
        return None if experts is None else experts + int(manifest["training"]["tokens"])


def _expert_load(ctx: EvalContext, loaded: LoadedModel) -> dict[str, Any]:
    import torch

    from moe_experts.routing.train_token import router_health

    model, tokenizer = loaded.model, loaded.tokenizer
    window = min(ctx.setup.preset.seq_len, model.config.max_position_embeddings)
    blocks = {}
    for d, docs in ctx.docs.items():
        ids: list[int] = []
        for text in docs.texts:
            ids += [*tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], tokenizer.eos_token_id]
            if len(ids) >= window * LOAD_BLOCKS_PER_DOMAIN:
                break
        n = max(1, len(ids) // window)
        blocks[d] = torch.tensor(ids[: n * window] if len(ids) >= window else ids, dtype=torch.long).reshape(n, -1)
    experts = list((loaded.manifest or {}).get("experts") or [f"expert {i}" for i in range(model.config.num_local_experts)])
    return router_health(model, blocks, experts, ctx.batch_size, dead_share=0.05)


# ---------------------------------------------------------------------------- the default line-up
def default_systems(setup: Setup, *, top_k: int = 2) -> list[System]:
    """Every system the evaluator knows, in report column order (the missing ones are skipped later)."""
    ws = setup.workspace
    systems: list[System] = [
        ModelSystem(GENERALIST, "dense", "compute-matched generalist (as many training tokens as seed + all branches consumed)",
                    GENERALIST, ws.model_dir(GENERALIST), "build it with `moe-experts train generalist`"),
        ModelSystem(GENERALIST_PARAMS, "dense", "parameter-matched generalist (as many parameters as all experts)",
                    GENERALIST_PARAMS, ws.model_dir(GENERALIST_PARAMS),
                    "the preset must ask for it (parameter_matched_generalist: true, e.g. --preset small); "
                    "then `moe-experts train generalist`"),
        ModelSystem(SEED, "dense", "the seed every starter expert branched from", SEED, ws.model_dir(SEED),
                    "build it with `moe-experts train seed`"),
    ]
    for card in setup.registry.cards:
        folder = None if card.model.kind == "pretrained" else ws.model_dir(card.name)
        systems.append(ModelSystem(f"expert:{card.name}", "expert", f"expert '{card.name}' alone, on every domain",
                                   f"expert:{card.name}", folder, "build it with `moe-experts train experts`",
                                   loader=lambda device, name=card.name: load_expert(setup, name, device)))
    systems.append(DocRoutedSystem(1))
    if top_k > 1:
        systems.append(DocRoutedSystem(top_k))
    token_dir = ws.root / "routers" / "token"
    systems.append(TokenMoESystem("token-moe", "moe", "token-level sparse MoE (experts' FFNs, trained gates)",
                               "token-moe", token_dir,
                               "the token-level router is not built (`moe-experts train-router --kind token`, "
                               "the token-level router issue)"))
    systems.append(OracleSystem())
    return systems
