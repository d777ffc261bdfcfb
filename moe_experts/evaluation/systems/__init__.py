"""The systems the evaluator compares, and their explicit registry.

``SYSTEMS`` maps a registry entry to a factory that returns the systems it
contributes (see ``base``); the evaluator's line-up is every entry's systems, in
this order, which is the report's column order. Adding a system (a user's own
checkpoint, another router) means writing a ``System`` subclass with a factory
in a module of this package and adding a line below; the runner, the statistics
and the report take it as is. Systems a workspace lacks are skipped, with the
reason and the command that builds them, when the evaluator runs.
"""

from __future__ import annotations

from moe_experts.evaluation.systems import model, oracle, routed, token_moe
from moe_experts.evaluation.systems.base import EXPERT_LOAD, LineUpOptions, System, SystemFactory
from moe_experts.modeling.stages import GENERALIST, GENERALIST_PARAMS, SEED, Setup

SYSTEMS: dict[str, SystemFactory] = {
    GENERALIST: model.generalist,
    GENERALIST_PARAMS: model.parameter_matched_generalist,
    SEED: model.seed,
    "experts": model.experts,  # expert:<name>, one per card
    "doc-top1": routed.top1,
    "doc-topk": routed.top_k_mixture,  # doc-top<k>, when --top-k is above 1
    "token-moe": token_moe.token_moe,
    "oracle": oracle.oracle,
}


def default_systems(setup: Setup, *, top_k: int = 2) -> list[System]:
    """Every registered system, in report column order (the ones a workspace lacks are skipped later)."""
    options = LineUpOptions(top_k=top_k)
    return [system for factory in SYSTEMS.values() for system in factory(setup, options)]


__all__ = ["EXPERT_LOAD", "SYSTEMS", "LineUpOptions", "System", "SystemFactory", "default_systems"]
