"""The evaluator's system registry: the default line-up, and a new system added by one registry entry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest

from moe_experts.config import load_preset, load_registry
from moe_experts.evaluation.context import EvalContext, EvalDocs, Unavailable
from moe_experts.evaluation.runner import evaluate_systems, select_systems
from moe_experts.evaluation.scoring import DocScores, scores_from_logprobs
from moe_experts.evaluation.systems import EXPERT_LOAD, SYSTEMS, LineUpOptions, System, default_systems
from moe_experts.modeling.stages import Setup
from moe_experts.workspace import Workspace
from tests.conftest import REPO


@pytest.fixture()
def setup(tmp_path) -> Setup:
    return Setup(workspace=Workspace(tmp_path / "ws"), registry=load_registry(REPO / "experts"),
                 preset=load_preset("micro"))


@dataclass
class ConstantSystem(System):
    """A toy system that needs no model: every byte of every document costs ``bits`` bits."""

    bits: float = 1.0
    name: str = "constant"
    kind: str = "dense"
    description: str = "a constant number of bits per byte"
    capabilities: ClassVar[frozenset[str]] = frozenset({EXPERT_LOAD})

    def unavailable(self, ctx: EvalContext) -> Unavailable | None:
        return None

    def scores(self, ctx: EvalContext) -> dict[str, DocScores]:
        # one "token" per byte, each with log-probability -bits * ln 2
        return {d: scores_from_logprobs([np.full(n, -self.bits * math.log(2), dtype=np.float32) for n in ctx.n_bytes(d)],
                                        ctx.n_bytes(d)) for d in ctx.domains}

    def cost(self, ctx: EvalContext) -> dict[str, Any]:
        return {"total_params": 0, "active_params": 0, "flops_per_token": 0, "routing_ms_p50": None,
                "routing_ms_p99": None, "tokens_per_second": None, "training_tokens": 0}

    def expert_load(self, ctx: EvalContext) -> dict[str, Any]:
        return {"experts": [], "layers": []}


@dataclass
class PlainSystem(ConstantSystem):
    """The same, without declaring the capability: the runner must not ask it for an expert load."""

    name: str = "plain"
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def expert_load(self, ctx: EvalContext) -> dict[str, Any]:
        raise AssertionError("asked for an expert load it did not declare")


def test_the_default_line_up_keeps_the_report_column_order(setup):
    experts = [f"expert:{n}" for n in setup.registry.names]
    assert [s.name for s in default_systems(setup, top_k=2)] == [
        "generalist", "generalist-params", "seed", *experts, "doc-top1", "doc-top2", "token-moe", "oracle"]
    assert [s.name for s in default_systems(setup, top_k=1)] == [
        "generalist", "generalist-params", "seed", *experts, "doc-top1", "token-moe", "oracle"]
    assert [s.name for s in default_systems(setup) if EXPERT_LOAD in s.capabilities] == ["token-moe"]


def test_a_registered_system_joins_the_line_up_and_is_evaluated(setup, monkeypatch):
    # adding a system is one entry: no other module changes
    monkeypatch.setitem(SYSTEMS, "constant", lambda setup, options: [ConstantSystem(bits=options.top_k)])
    line_up = default_systems(setup, top_k=3)
    assert [s.name for s in line_up][-2:] == ["oracle", "constant"]  # registry order is column order
    chosen = select_systems(line_up, ("const*",))
    assert [s.name for s in chosen] == ["constant"] and chosen[0].bits == 3

    docs = {"law": EvalDocs("law", ["a", "b"], ["statute", "tort law"]), "code": EvalDocs("code", ["c"], ["def f(): pass"])}
    ctx = EvalContext(setup, docs, speed_prompts=0, latency_requests=0)
    done = evaluate_systems(ctx, [*chosen, PlainSystem()])
    assert [s.name for s in done.systems] == ["constant", "plain"] and done.skipped == []
    assert done.scores["constant"]["law"].bits_per_byte == pytest.approx(3.0)
    assert done.scores["plain"]["code"].bits_per_byte == pytest.approx(1.0)
    assert done.costs["constant"]["total_params"] == 0
    assert done.expert_load == {"constant": {"experts": [], "layers": []}}  # only the system that declared it


def test_an_unavailable_registered_system_is_skipped_with_its_reason(setup, monkeypatch):
    @dataclass
    class Missing(ConstantSystem):
        name: str = "missing"

        def unavailable(self, ctx: EvalContext) -> Unavailable | None:
            return Unavailable("nothing to load", "build it first")

    monkeypatch.setitem(SYSTEMS, "missing", lambda setup, options: [Missing()])
    ctx = EvalContext(setup, {"law": EvalDocs("law", ["a"], ["statute"])}, speed_prompts=0, latency_requests=0)
    done = evaluate_systems(ctx, select_systems(default_systems(setup), ("missing",)))
    assert done.systems == [] and done.skipped == [{"name": "missing", "reason": "nothing to load", "hint": "build it first"}]


def test_line_up_options_reach_every_factory(setup, monkeypatch):
    seen: list[LineUpOptions] = []
    monkeypatch.setitem(SYSTEMS, "spy", lambda setup, options: seen.append(options) or [])
    default_systems(setup, top_k=4)
    assert seen == [LineUpOptions(top_k=4)]
