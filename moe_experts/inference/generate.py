"""Text generation for ``moe-experts ask``: one expert (top-1), or the c-BTM top-k mixture.

Top-1 hands batches to transformers' ``model.generate``. The mixture (as in
Branch-Train-Merge / c-BTM) runs its own decoding loop, because no single model
holds the distribution it samples from: at every step each active expert's
next-token distribution is computed and mixed as ``p = sum_i w_i p_i``, then
repetition penalty, temperature and top-p are applied to ``log p`` with the same
transformers processors ``generate`` uses, and one token is drawn.

Both paths take an optional ``streamer`` with transformers' ``BaseStreamer`` protocol: ``put`` is called once
with the prompt's ids, then with each new token as it is chosen, and ``end`` when generation stops; a
streamer that raises from ``put`` aborts generation (a caller's way to stop it early).
Streaming needs one prompt at a time.

Both paths fit the request into the models' context: the starter models only
have 128 positions, so ``max_new_tokens`` is clamped (the prompt always keeps at
least a quarter of the context) and prompts are cut from the LEFT, keeping the
text nearest to where the answer starts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from moe_experts.errors import RequestError

if TYPE_CHECKING:
    import torch

    from moe_experts.config import GenerationDefaults

logger = logging.getLogger(__name__)

MIN_PROMPT_FRACTION = 4  # the prompt keeps at least 1/4 of the context, however many tokens are asked for


def check_generation(**values: Any) -> None:
    """Refuse generation settings outside the one set of limits, the card's (``config.GenerationDefaults``).

    Settings left None are not checked; a request, a flag or an API call meets the same bounds as a card.
    """
    from pydantic import ValidationError

    from moe_experts.config import GenerationDefaults

    given = {k: v for k, v in values.items() if v is not None}
    unknown = sorted(set(given) - set(GenerationDefaults.model_fields))
    if unknown:
        raise RequestError(f"unknown generation setting(s): {', '.join(unknown)}",
                           hint=f"use {', '.join(GenerationDefaults.model_fields)}")
    try:
        GenerationDefaults.model_validate(given)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0])
        bounds = {k: getattr(m, k) for m in GenerationDefaults.model_fields[name].metadata
                  for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
        low = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds.get('gt')}"
        high = f"{bounds['le']}]" if "le" in bounds else f"{bounds.get('lt')})"
        raise RequestError(f"{name}: {err['msg'].lower()}, got {err['input']!r}",
                           hint=f"use a {name} in {low}, {high}, the limits an expert card's generation block has"
                           + (" (0 = greedy)" if name == "temperature" else "")) from None


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None  # same seed -> same text

    def __post_init__(self) -> None:
        check_generation(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                         repetition_penalty=self.repetition_penalty)

    @classmethod
    def from_card(cls, defaults: GenerationDefaults, **overrides: Any) -> GenerationSettings:
        """The card's generation defaults, with the overrides that are not None (CLI flags left unset are None)."""
        base = {f: getattr(defaults, f) for f in ("max_new_tokens", "temperature", "top_p", "repetition_penalty")}
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass(frozen=True)
class Generation:
    text: str  # the new text only (prompt not repeated), special tokens skipped
    new_tokens: int  # tokens generated, the final eos included
    seconds: float  # wall time of the batch this came from (top-1 batches several prompts), or of the mixture
    finish_reason: Literal["eos", "length", "stop"]  # stop: the caller ended it (a stop string)
    token_ids: tuple[int, ...] = ()  # the new tokens, eos included; for exact comparisons


def format_prompt(tokenizer: Any, text: str) -> str:
    """The user's text in the tokenizer's chat template (with the assistant turn opened), or unchanged without one."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text


def generate(
    model: Any, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings, *, batch_size: int = 8,
    streamer: Any = None,
) -> list[Generation]:
    """Generate an answer to each prompt with one model, ``batch_size`` prompts at a time (left-padded).

    Each ``Generation.seconds`` is the wall time of the whole batch it was generated in. ``streamer`` (one
    prompt only) is handed to ``model.generate``.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if streamer is not None and len(prompts) > 1:
        raise ValueError(f"a streamer follows one answer, but {len(prompts)} prompts were given; stream one at a time")
    if not prompts:
        return []
    max_new, budget = fit_context([model], settings.max_new_tokens)
    encoded, cut = zip(*(encode_prompt(tokenizer, p, budget) for p in prompts))
    _warn_fitted(settings.max_new_tokens, max_new, budget, cut=sum(cut), total=len(prompts))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = eos_ids_of(tokenizer, [model])
    options: dict[str, Any] = {
        "max_new_tokens": max_new,
        "min_new_tokens": 0,  # overrides a checkpoint's own generation_config: the mixture has no minimum either
        "do_sample": settings.temperature > 0,
        "repetition_penalty": float(settings.repetition_penalty),
        "pad_token_id": pad_id,
        "eos_token_id": sorted(eos_ids),
    }
    if streamer is not None:
        options["streamer"] = streamer
    if settings.temperature > 0:
        # top_k=0 switches off transformers' default top-k of 50, which the mixture does not have either.
        options.update(temperature=float(settings.temperature), top_p=float(settings.top_p), top_k=0)
    device = device_of(model)
    results: list[Generation] = []
    with torch.inference_mode(), _seeded(settings.seed, device):
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
            for row, ids in enumerate(batch):
                # Left padding: every row's last prompt token sits at column T-1, where generation continues.
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids) :] = 1
            began = time.perf_counter()
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **options
            )  # (B, T + n)
            seconds = time.perf_counter() - began
            for row_ids in out[:, width:].tolist():  # (B, n)
                tokens, finish = _until_eos(row_ids, eos_ids)
                results.append(make_generation(tokenizer, tokens, seconds, finish))
    return results


def generate_mixture(
    models: Sequence[Any], weights: Sequence[float], tokenizer: Any, prompt: str, settings: GenerationSettings,
    *, streamer: Any = None,
) -> Generation:
    """Generate from the c-BTM mixture of ``models`` weighted by ``weights`` (renormalised; zero-weight experts never run).

    ``streamer`` is fed as ``model.generate`` feeds one: the prompt's ids, each new token, then ``end()``.
    """
    import torch

    if len(models) != len(weights):
        raise ValueError(f"{len(models)} models but {len(weights)} weights; give one weight per expert")
    norm = _normalise_weights(weights)
    active = [(m, w) for m, w in zip(models, norm) if w > 0]
    active_models = [m for m, _ in active]
    active_weights = [w for _, w in active]
    max_new, budget = fit_context(active_models, settings.max_new_tokens)
    ids, cut = encode_prompt(tokenizer, prompt, budget)
    _warn_fitted(settings.max_new_tokens, max_new, budget, cut=int(cut), total=1)
    eos_ids = eos_ids_of(tokenizer, active_models)
    generator = torch.Generator()
    if settings.seed is not None:
        generator.manual_seed(settings.seed)
    else:
        generator.seed()
    chooser = _TokenChooser(settings, generator)
    history = torch.tensor([ids], dtype=torch.long)  # (1, T): what the repetition penalty looks back on
    step_input = history  # the first step feeds the whole prompt, later steps one token
    caches: list[Any] = [None] * len(active_models)
    # transformers 5 renamed the KV-cache argument and output field past_key_values -> cache (the old name
    # warns and goes in 5.40); older releases only know past_key_values.
    cache_names = ["cache" if accepts(m, "cache") else "past_key_values" for m in active_models]
    # Only the last position's logits are needed; without this a long prompt costs (T, V) floats per expert.
    extra = [{"logits_to_keep": 1} if accepts(m, "logits_to_keep") else {} for m in active_models]
    tokens: list[int] = []
    finish: Literal["eos", "length"] = "length"
    began = time.perf_counter()
    if streamer is not None:
        streamer.put(history)  # (1, T)
    with torch.inference_mode():
        for _ in range(max_new):
            logits = []
            for k, model in enumerate(active_models):
                cache = {cache_names[k]: caches[k]}
                out = model(input_ids=step_input.to(device_of(model)), use_cache=True, **cache, **extra[k])
                caches[k] = getattr(out, cache_names[k])  # each expert keeps its own cache: one new token per step
                logits.append(out.logits[0, -1])  # (V,)
            log_p = mixture_log_probs(logits, active_weights)  # (V,)
            token = chooser(history, log_p)
            tokens.append(token)
            if streamer is not None:
                streamer.put(torch.tensor([token], dtype=torch.long))  # (1,)
            if token in eos_ids:
                finish = "eos"
                break
            step_input = torch.tensor([[token]], dtype=torch.long)  # (1, 1)
            history = torch.cat([history, step_input], dim=1)  # (1, T + t)
    if streamer is not None:
        streamer.end()
    return make_generation(tokenizer, tokens, time.perf_counter() - began, finish)


def mixture_log_probs(logits: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``log sum_i w_i softmax(logits_i)`` in float32, weights renormalised; each logits tensor is (V,)."""
    import torch

    if len(logits) != len(weights):
        raise ValueError(f"{len(logits)} logits tensors but {len(weights)} weights")
    w = _normalise_weights(weights)
    # Experts may pad their embedding matrices differently; ids past the narrowest are never produced by
    # the shared tokenizer, so dropping them loses nothing.
    width = min(x.shape[-1] for x in logits)
    kept = [(x, wi) for x, wi in zip(logits, w) if wi > 0]
    stacked = torch.stack([x[..., :width].float().cpu() for x, _ in kept])  # (E, V)
    log_w = torch.tensor([wi for _, wi in kept], dtype=torch.float32).log()  # (E,)
    # logsumexp in log space: the same sum as p = sum w_i p_i, without underflow for rare tokens.
    return torch.logsumexp(torch.log_softmax(stacked, dim=-1) + log_w[:, None], dim=0)  # (V,)


def mixture_next_token_probs(logits: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """The mixed next-token distribution ``sum_i w_i softmax(logits_i)``, (V,) float32, sums to 1."""
    return mixture_log_probs(logits, weights).exp()  # (V,)


# --------------------------------------------------------------------------- helpers


class _TokenChooser:
    """Turns mixed log-probabilities into one token, the way transformers' generate treats logits.

    Order as in ``GenerationMixin._get_logits_processor``: repetition penalty, then temperature, then top-p.
    The penalty sees ``log p`` (always <= 0), so a seen token's probability becomes ``p ** penalty``.
    """

    def __init__(self, settings: GenerationSettings, generator: torch.Generator) -> None:
        from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

        self.settings = settings
        self.generator = generator
        rp, top_p = float(settings.repetition_penalty), float(settings.top_p)
        self.penalty = RepetitionPenaltyLogitsProcessor(rp) if rp != 1.0 else None
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, history: torch.Tensor, log_p: torch.Tensor) -> int:
        import torch

        scores = log_p[None, :].clone()  # (1, V)
        if self.penalty is not None:
            scores = self.penalty(history, scores)  # (1, V)
        temperature = self.settings.temperature
        if temperature == 0:
            return int(scores.argmax(dim=-1))
        scores = scores / temperature  # softmax(log p / T) = p^(1/T) renormalised  # (1, V)
        if self.top_p is not None:
            scores = self.top_p(history, scores)  # (1, V), -inf outside the nucleus
        probs = torch.softmax(scores, dim=-1)  # (1, V)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _normalise_weights(weights: Sequence[float]) -> list[float]:
    values = [float(w) for w in weights]
    if not values:
        raise ValueError("no weights given; the mixture needs one weight per expert")
    if any(not math.isfinite(w) for w in values):
        raise ValueError(f"weights must be finite numbers, got {values}")
    if any(w < 0 for w in values):
        raise ValueError(f"weights must be >= 0, got {values}")
    total = sum(values)
    if total <= 0:
        raise ValueError(f"weights are all zero ({values}); at least one expert needs a positive weight")
    return [w / total for w in values]


def _context(models: Sequence[Any]) -> int | None:
    sizes = [getattr(getattr(m, "config", None), "max_position_embeddings", None) for m in models]
    known = [int(s) for s in sizes if s]
    return min(known) if known else None


def fit_context(models: Sequence[Any], requested: int) -> tuple[int, int | None]:
    """(max_new_tokens, prompt token budget): a clamped answer length, and what is left of the context for the prompt."""
    context = _context(models)
    if context is None:
        return requested, None
    max_new = max(1, min(requested, context - context // MIN_PROMPT_FRACTION))
    return max_new, context - max_new


def _warn_fitted(requested: int, max_new: int, budget: int | None, *, cut: int, total: int) -> None:
    # One warning per call, not one per prompt or batch: a long request list must not flood the log.
    problems = []
    if max_new < requested:
        problems.append(f"answers are limited to {max_new} new tokens ({requested} asked)")
    if cut:
        problems.append(f"{cut} of {total} prompts were cut from the left to {budget} tokens")
    if problems:
        logger.warning("the model's context is %d tokens: %s", (budget or 0) + max_new, "; ".join(problems))


def encode_prompt(tokenizer: Any, prompt: str, budget: int | None) -> tuple[list[int], bool]:
    """The prompt's token ids (chat template, bos, cut from the left to ``budget``) and whether it was cut."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    # verbose=False: a prompt longer than the context is expected here (it is cut below, and the callers say
    # so), not worth the tokenizer's "sequence length is longer than the maximum" warning
    ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False, verbose=False)["input_ids"]
    # A chat template writes its own start tokens; otherwise begin like a training document does
    # (the starter models saw every document after an end-of-text / bos token).
    bos = tokenizer.bos_token_id
    prefix = [bos] if bos is not None and not templated else []
    cut = budget is not None and len(prefix) + len(ids) > budget
    if cut:
        ids = ids[len(ids) - (budget - len(prefix)) :]  # keep the end, nearest to the answer
    ids = prefix + ids
    if not ids:
        raise ValueError("the prompt is empty and the tokenizer has no bos token to start from; give some text")
    return ids, cut


def eos_ids_of(tokenizer: Any, models: Sequence[Any]) -> set[int]:
    ids: set[int] = set()
    candidates: list[Any] = [tokenizer.eos_token_id]
    candidates += [getattr(getattr(m, "generation_config", None), "eos_token_id", None) for m in models]
    for c in candidates:
        ids.update([c] if isinstance(c, int) else (c or []))
    return ids


def _until_eos(tokens: list[int], eos_ids: set[int]) -> tuple[list[int], Literal["eos", "length"]]:
    # generate() fills rows that finished early with padding (which may be the eos id itself).
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: i + 1], "eos"
    return tokens, "length"


def make_generation(tokenizer: Any, tokens: list[int], seconds: float,
                    finish: Literal["eos", "length", "stop"]) -> Generation:
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return Generation(text=text, new_tokens=len(tokens), seconds=seconds, finish_reason=finish, token_ids=tuple(tokens))


def accepts(model: Any, argument: str) -> bool:
    import inspect

    return argument in inspect.signature(type(model).forward).parameters


def device_of(model: Any) -> Any:
    device = getattr(model, "device", None)
    return device if device is not None else next(model.parameters()).device


@contextlib.contextmanager
def _seeded(seed: int | None, device: Any) -> Iterator[None]:
    """Seed torch's global RNG (generate samples from it) without changing it for the caller afterwards."""
    import torch

    if seed is None:
        yield
        return
    cuda = [device.index or 0] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield
