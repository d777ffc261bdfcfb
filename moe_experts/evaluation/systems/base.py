"""The interface every evaluated system implements, and what a registry entry is.

A system turns the test documents of every domain into per-document scores
(``DocScores``) and says what it costs; the runner, the statistics and the
report take it as is. A registry entry (``SYSTEMS`` in this package) is a
factory that, given the workspace and the line-up options, returns the systems
it contributes (none, one, or one per expert card), in report column order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from moe_experts.evaluation.context import EvalContext, Unavailable
from moe_experts.evaluation.scoring import DocScores
from moe_experts.modeling.stages import Setup

# Capabilities: optional extras a system declares, and the runner collects into the report.
EXPERT_LOAD = "expert_load"  # ``expert_load(ctx)``: per MoE layer, where each domain's tokens go


class System(ABC):
    """One column of the report."""

    name: str  # column name in the report
    kind: str  # dense | expert | routed | oracle | moe
    description: str
    capabilities: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def unavailable(self, ctx: EvalContext) -> Unavailable | None:
        """Why this system cannot be evaluated in this workspace (and how to build it), or None."""

    @abstractmethod
    def scores(self, ctx: EvalContext) -> dict[str, DocScores]:
        """Per-document scores on every evaluated domain."""

    @abstractmethod
    def cost(self, ctx: EvalContext) -> dict[str, Any]:
        """total_params, active_params, flops_per_token, routing_ms_p50/p99, tokens_per_second,
        training_tokens (None when unknown)."""

    def expert_load(self, ctx: EvalContext) -> dict[str, Any]:
        """With the EXPERT_LOAD capability: per layer, each expert's share of every domain's tokens."""
        raise NotImplementedError(f"{self.name} does not declare the {EXPERT_LOAD} capability")


@dataclass(frozen=True)
class LineUpOptions:
    """What a registry entry may depend on besides the workspace."""

    top_k: int = 2  # the document router's mixture; 1 = no mixture system


SystemFactory = Callable[[Setup, LineUpOptions], Sequence[System]]
