"""Each document scored by its own domain's expert: the best a document router could do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moe_experts.evaluation.context import EvalContext, Unavailable, experts_training_tokens, expert_key
from moe_experts.evaluation.scoring import DocScores, scores_from_logprobs
from moe_experts.evaluation.systems.base import LineUpOptions, System
from moe_experts.modeling.stages import Setup


@dataclass
class OracleSystem(System):
    name: str = "oracle"
    kind: str = "oracle"
    description: str = "each document scored by its own domain's expert (an upper bound for routing)"

    def _names(self, ctx: EvalContext) -> list[str]:
        return [ctx.setup.registry.by_domain(d).name for d in ctx.domains]

    def unavailable(self, ctx: EvalContext) -> Unavailable | None:
        return ctx.experts_unavailable(self._names(ctx))

    def scores(self, ctx: EvalContext) -> dict[str, DocScores]:
        out = {}
        for d, name in zip(ctx.domains, self._names(ctx)):
            logprobs = ctx.model_logprobs(expert_key(name), ctx.expert_loader(name))
            out[d] = scores_from_logprobs(logprobs[d], ctx.n_bytes(d))
        return out

    def cost(self, ctx: EvalContext) -> dict[str, Any]:
        names = self._names(ctx)
        infos = [ctx.info(expert_key(n)) for n in names]
        return {"total_params": sum({id(i): i.parameters for i in infos}.values()),
                "active_params": max(i.active_parameters for i in infos),
                "flops_per_token": max(i.flops_per_token for i in infos), "routing_ms_p50": None,
                "routing_ms_p99": None, "tokens_per_second": None,
                "training_tokens": experts_training_tokens(ctx, names)}


# ---------------------------------------------------------------------------- registry entry
def oracle(setup: Setup, options: LineUpOptions) -> list[System]:
    return [OracleSystem()]
