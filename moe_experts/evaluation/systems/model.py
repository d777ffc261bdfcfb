"""Single causal LMs scored on every domain: the generalists, the seed, each expert alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_experts.evaluation.context import EvalContext, Loader, Unavailable, expert_key, manifest_of
from moe_experts.evaluation.scoring import DocScores, scores_from_logprobs
from moe_experts.evaluation.systems.base import LineUpOptions, System
from moe_experts.modeling.checkpoints import load_checkpoint
from moe_experts.modeling.generalist import generalist_note
from moe_experts.modeling.stages import GENERALIST, GENERALIST_PARAMS, SEED, Setup, load_expert, tokens_seen
from moe_experts.workspace import MANIFEST


@dataclass
class ModelSystem(System):
    """One causal LM scored on every domain."""

    name: str
    kind: str
    description: str
    key: str  # model key in the context (shared with routed systems for experts)
    folder: Path | None  # checked for existence; None for a card's pretrained model
    hint: str  # how to build it when missing
    loader: Loader | None = None  # None: load the checkpoint in ``folder``

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
        manifest = manifest_of(self.folder)
        return tokens_seen(manifest) if manifest else None


# ---------------------------------------------------------------------------- registry entries
def generalist(setup: Setup, options: LineUpOptions) -> list[System]:
    # after the expert set grew, say which generalist this is: the old one has not seen the new domains
    return [ModelSystem(GENERALIST, "dense",
                        "compute-matched generalist (as many training tokens as the seed and its branches consumed): "
                        + generalist_note(setup),
                        GENERALIST, setup.workspace.model_dir(GENERALIST), "build it with `moe-experts train generalist`")]


def parameter_matched_generalist(setup: Setup, options: LineUpOptions) -> list[System]:
    return [ModelSystem(GENERALIST_PARAMS, "dense", "parameter-matched generalist (as many parameters as all experts)",
                        GENERALIST_PARAMS, setup.workspace.model_dir(GENERALIST_PARAMS),
                        "the preset must ask for it (parameter_matched_generalist: true, e.g. the small preset); "
                        "then `moe-experts train generalist`")]


def seed(setup: Setup, options: LineUpOptions) -> list[System]:
    return [ModelSystem(SEED, "dense", "the seed every starter expert branched from", SEED,
                        setup.workspace.model_dir(SEED), "build it with `moe-experts train seed`")]


def experts(setup: Setup, options: LineUpOptions) -> list[System]:
    """Each card's expert alone, in card order."""
    out: list[System] = []
    for card in setup.registry.cards:
        folder = None if card.model.kind == "pretrained" else setup.workspace.model_dir(card.name)
        out.append(ModelSystem(expert_key(card.name), "expert", f"expert '{card.name}' alone, on every domain",
                               expert_key(card.name), folder, "build it with `moe-experts train experts`",
                               loader=lambda device, name=card.name: load_expert(setup, name, device)))
    return out
