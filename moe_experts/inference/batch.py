"""Batched decoding where every row has its own settings: the server's dynamic batches.

``generate`` hands a batch to transformers' ``model.generate``, which applies one temperature, one top-p
and one random stream to every row. A server batches requests that asked for different things, so this
loop keeps them per row: temperature, top-p, repetition penalty, answer length, and a seeded random
generator of its own (a request with a seed gets the same text whoever it was batched with). It decodes
with one or several models; with several (the c-BTM mixture) each row mixes the models' next-token
distributions with its own weights, ``p = sum_i w_i p_i``, as ``generate_mixture`` does for one row.

Rows are left-padded to one width, with an attention mask and position ids that skip the padding, and
each model keeps one KV cache for the batch. A row ends at an end-of-sequence token, at its length limit,
or when its ``watch`` says so (a stop string); a ``watch`` that raises (the client went away, the request
timed out) ends that row with the exception and the others go on. Finished rows leave the batch, and
their cache rows with them, so a long answer does not keep short ones' compute running.

The processors follow transformers' order (``GenerationMixin._get_logits_processor``): repetition penalty,
temperature, top-p. With one model they see the raw logits, as in ``model.generate``; with a mixture they
see ``log p`` of the mixed distribution, as in ``generate_mixture``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from moe_experts.inference.generate import GenerationSettings, Generation, accepts, device_of, make_generation

if TYPE_CHECKING:
    import torch


@dataclass
class Row:
    """One request in a batch."""

    prompt_ids: list[int]  # already fitted to the models' context (``generate.encode_prompt``)
    settings: GenerationSettings  # ``max_new_tokens`` already fitted (``generate.fit_context``)
    weights: Sequence[float] = ()  # one per model for a mixture; empty with one model
    watch: Callable[[int], bool] | None = None  # sees each new token; True ends the row, raising aborts it


def decode_batch(models: Sequence[Any], tokenizer: Any, rows: Sequence[Row], *, eos_ids: set[int],
                 pad_id: int) -> list[Generation | BaseException]:
    """Decode every row together; each result is the row's Generation, or the exception its ``watch`` raised.

    ``Generation.seconds`` is the wall time of the whole batch. ``finish_reason`` is ``eos``, ``length``, or
    ``stop`` (the watch ended the row; the token it saw is included).
    """
    import torch

    if not rows:
        return []
    if not models:
        raise ValueError("no model to decode with")
    if len(models) > 1 and any(len(r.weights) != len(models) for r in rows):
        raise ValueError(f"a mixture of {len(models)} models needs {len(models)} weights on every row")
    began = time.perf_counter()
    n, device = len(rows), device_of(models[0])
    width = max(len(r.prompt_ids) for r in rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((n, width), dtype=torch.long)  # (B, T)
    history = torch.empty((n, width), dtype=torch.long)  # (B, T): what the repetition penalty looks back on
    for i, r in enumerate(rows):
        ids = torch.tensor(r.prompt_ids, dtype=torch.long)
        input_ids[i, width - len(ids):] = ids
        mask[i, width - len(ids):] = 1
        # Padding repeats the row's first token: penalising a token twice is penalising it once.
        history[i] = ids[0]
        history[i, width - len(ids):] = ids
    state = _Settings(rows, len(models))
    alive = list(range(n))  # the batch's rows, as indices into ``rows``
    tokens: list[list[int]] = [[] for _ in rows]
    results: list[Generation | BaseException | None] = [None] * n
    names = ["cache" if accepts(m, "cache") else "past_key_values" for m in models]
    extra = [{"logits_to_keep": 1} if accepts(m, "logits_to_keep") else {} for m in models]
    caches: list[Any] = [None] * len(models)
    step_ids = input_ids
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): padding does not move the real tokens' positions
    with torch.inference_mode():
        while alive:
            logits = []
            for k, model in enumerate(models):
                out = model(input_ids=step_ids.to(device), attention_mask=mask.to(device),
                            position_ids=positions.to(device), use_cache=True, **{names[k]: caches[k]}, **extra[k])
                caches[k] = getattr(out, names[k])
                logits.append(out.logits[:, -1].float().cpu())  # (B, V)
            chosen = state.choose(history, logits)  # (B,)
            keep: list[int] = []
            for j, i in enumerate(alive):
                token = int(chosen[j])
                tokens[i].append(token)
                finish: Literal["eos", "length", "stop"] | None = None
                try:
                    if rows[i].watch is not None and rows[i].watch(token):
                        finish = "stop"
                except Exception as exc:  # this row's request is gone (cancelled, timed out); the rest go on
                    results[i] = exc
                    continue
                if finish is None and token in eos_ids:
                    finish = "eos"
                elif finish is None and len(tokens[i]) >= rows[i].settings.max_new_tokens:
                    finish = "length"
                if finish is None:
                    keep.append(j)
                else:
                    results[i] = make_generation(tokenizer, tokens[i], time.perf_counter() - began, finish)
            if not keep:
                break
            step_ids = chosen[keep][:, None]  # (B', 1)
            if len(keep) < len(alive):
                index = torch.tensor(keep, dtype=torch.long)
                caches = [_select(c, index.to(device)) for c in caches]
                mask, positions, history = mask[index], positions[index], history[index]
                state.select(index)
                alive = [alive[j] for j in keep]
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=torch.long)], dim=1)  # (B', T + 1)
            positions = positions[:, -1:] + 1  # (B', 1)
            history = torch.cat([history, step_ids], dim=1)  # (B', T + 1)
    return [r if r is not None else RuntimeError("row not finished") for r in results]


class _Settings:
    """Each alive row's sampling settings as tensors, and the rule that turns logits into one token per row."""

    def __init__(self, rows: Sequence[Row], n_models: int) -> None:
        import torch

        s = [r.settings for r in rows]
        self.temperature = torch.tensor([x.temperature for x in s], dtype=torch.float32)  # (B,)
        self.top_p = torch.tensor([x.top_p for x in s], dtype=torch.float32)  # (B,)
        self.penalty = torch.tensor([x.repetition_penalty for x in s], dtype=torch.float32)  # (B,)
        self.generators = [_generator(x.seed) for x in s]
        self.log_w = None
        if n_models > 1:
            w = torch.tensor([list(r.weights) for r in rows], dtype=torch.float64)  # (B, E)
            self.log_w = (w / w.sum(dim=1, keepdim=True)).float().log()  # (B, E)

    def select(self, index: torch.Tensor) -> None:
        self.temperature, self.top_p, self.penalty = self.temperature[index], self.top_p[index], self.penalty[index]
        self.generators = [self.generators[int(i)] for i in index]
        if self.log_w is not None:
            self.log_w = self.log_w[index]

    def choose(self, history: torch.Tensor, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        import torch

        if self.log_w is None:
            scores = logits[0]  # (B, V)
        else:
            # Experts may pad their vocabularies differently; ids past the narrowest are never produced.
            vocab = min(x.shape[-1] for x in logits)
            stacked = torch.stack([torch.log_softmax(x[:, :vocab], dim=-1) for x in logits])  # (E, B, V)
            scores = torch.logsumexp(stacked + self.log_w.T[:, :, None], dim=0)  # (B, V)
        if bool((self.penalty != 1.0).any()):
            seen = torch.gather(scores, 1, history)  # (B, L)
            p = self.penalty[:, None]  # (B, 1)
            scores = scores.scatter(1, history, torch.where(seen < 0, seen * p, seen / p))  # (B, V)
        chosen = scores.argmax(dim=-1)  # (B,): greedy rows keep this
        sampled = (self.temperature > 0).nonzero().flatten().tolist()
        if sampled:
            rows = torch.tensor(sampled, dtype=torch.long)
            warped = _top_p(scores[rows] / self.temperature[rows, None], self.top_p[rows])  # (S, V)
            cdf = torch.softmax(warped, dim=-1).cumsum(dim=-1)  # (S, V)
            # Inverse-CDF sampling with one uniform draw per row from the row's own generator: one vectorised
            # search instead of a multinomial call per row (which cost 0.2 ms each on a 4k vocabulary).
            u = torch.cat([torch.rand(1, generator=self.generators[i]) for i in sampled])  # (S,)
            u = u * cdf[:, -1]  # the cumulative sum's last value is 1 up to rounding
            # the first token whose cumulative probability passes u: never one of probability 0, even for u = 0
            picked = torch.searchsorted(cdf, u[:, None], side="right").clamp(max=cdf.shape[-1] - 1)[:, 0]  # (S,)
            chosen[rows] = picked
        return chosen


def _top_p(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """transformers' TopPLogitsWarper with one ``top_p`` per row: keep the smallest set of tokens whose
    probability reaches ``top_p`` (always at least the most probable one)."""
    import torch

    if bool((top_p >= 1.0).all()):
        return scores
    ascending, order = torch.sort(scores, descending=False)  # (S, V)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)  # (S, V)
    drop = cumulative <= (1 - top_p)[:, None]  # (S, V)
    drop[:, -1] = False
    drop &= (top_p < 1.0)[:, None]
    return scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))


def _generator(seed: int | None) -> torch.Generator:
    import torch

    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def _select(cache: Any, index: torch.Tensor) -> Any:
    """Keep only the batch rows in ``index`` of a KV cache (transformers' DynamicCache, or legacy tuples)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(index)
        return cache
    return tuple(tuple(t[index] for t in layer) for layer in cache)
