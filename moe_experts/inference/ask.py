"""``moe-experts ask``: route requests, then generate with the chosen expert(s).

Many requests are answered in one process: every request is routed in one
batch, experts are loaded once, and top-1 requests are grouped by expert and
generated in batches. With ``top_k > 1`` the k most probable experts' next-token
distributions are mixed token by token, weighted by the posterior (c-BTM).
"""

from __future__ import annotations

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
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        # argv bytes that are not UTF-8 arrive as lone surrogates (surrogateescape)
        raise RequestError(
            f"{where}: the request is not valid UTF-8 (bad byte at character {exc.start})",
            hint="re-encode the text as UTF-8 (e.g. iconv -t UTF-8)",
        ) from None
    if not text.strip():
        raise RequestError(f"{where}: the request is empty", hint="send the question's text (`text`; on the command line - reads it from stdin)")
    if size > max_bytes:
        raise RequestError(
            f"{where}: the request is {size:,} bytes; the limit is {max_bytes:,}",
            hint="send a shorter text (routing reads all of it; the experts' context is far smaller), "
            "or raise the limit (`max_bytes`)",
        )
    return text


def decode_request(data: bytes, *, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            f"{where}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            hint="re-encode the input as UTF-8 (e.g. iconv -t UTF-8)",
        ) from None


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
    check_expert(setup, expert)
    if top_k < 1 or top_k > len(setup.registry.names):
        raise RequestError(f"`top_k` must be between 1 and {len(setup.registry.names)} (the number of experts), got {top_k}")
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
        outs = generate(loaded.model, loaded.tokenizer, [requests[i].text for i in idx], settings, batch_size=batch_size)
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
