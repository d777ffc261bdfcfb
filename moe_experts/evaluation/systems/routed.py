"""The document router: top-1 (the chosen expert scores the document) or the top-k posterior mixture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_experts.evaluation.context import EvalContext, Unavailable, experts_training_tokens, expert_key
from moe_experts.evaluation.scoring import DocScores, mixture_logprobs, scores_from_logprobs
from moe_experts.evaluation.systems.base import LineUpOptions, System
from moe_experts.modeling.checkpoints import check_shared_vocabulary
from moe_experts.modeling.stages import Setup


@dataclass
class DocRoutedSystem(System):
    """The router reads the whole test document (as a request) and the chosen expert(s) then score it.

    A request the router abstains on goes to the fallback alone, as ``ask`` does.
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
        why = ctx.router_unavailable() or ctx.experts_unavailable(ctx.setup.registry.names)
        if why is None and self.top_k > len(ctx.setup.registry.names):
            why = Unavailable(f"top-{self.top_k} needs at least {self.top_k} experts", "lower top_k")
        return why

    def plans(self, ctx: EvalContext) -> dict[str, list[tuple[tuple[str, float], ...]]]:
        out = {}
        for d, decisions in ctx.decisions().items():
            out[d] = [((x.expert, 1.0),) if self.top_k == 1 or x.abstained else tuple(x.top_k(self.top_k))
                      for x in decisions]
        return out

    def scores(self, ctx: EvalContext) -> dict[str, DocScores]:
        experts = ctx.expert_logprobs()
        if self.top_k > 1:
            check_shared_vocabulary({n: ctx.info(expert_key(n)).tokenizer for n in experts})
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
        infos = [ctx.info(expert_key(n)) for n in ctx.setup.registry.names]
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


# ---------------------------------------------------------------------------- registry entries
def top1(setup: Setup, options: LineUpOptions) -> list[System]:
    return [DocRoutedSystem(1)]


def top_k_mixture(setup: Setup, options: LineUpOptions) -> list[System]:
    """``doc-top<k>``, when the line-up asks for a mixture (``--top-k`` above 1)."""
    return [DocRoutedSystem(options.top_k)] if options.top_k > 1 else []
