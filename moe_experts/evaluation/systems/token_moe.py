"""The token-level sparse MoE (routers/token/): a causal LM, plus where each domain's tokens go."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from moe_experts.evaluation.context import EvalContext, Unavailable, experts_training_tokens, manifest_of
from moe_experts.evaluation.scoring import DocScores, scores_from_logprobs
from moe_experts.evaluation.systems.base import EXPERT_LOAD, LineUpOptions, System
from moe_experts.evaluation.systems.model import ModelSystem
from moe_experts.modeling.checkpoints import LoadedModel
from moe_experts.modeling.stages import SEED, Setup
from moe_experts.routing.train_token import expert_set_change, router_health, token_router_dir

LOAD_BLOCKS_PER_DOMAIN = 16  # test blocks per domain for the expert-load heatmap


@dataclass
class TokenMoESystem(ModelSystem):
    capabilities: ClassVar[frozenset[str]] = frozenset({EXPERT_LOAD})

    def unavailable(self, ctx: EvalContext) -> Unavailable | None:
        missing = super().unavailable(ctx)
        if missing is not None:
            return missing
        change = expert_set_change(ctx.setup)
        if change is not None:  # scoring it would compare another expert set under this one's name
            return Unavailable(change, "rebuild it with `moe-experts train-router --kind token --force`")
        return None

    def scores(self, ctx: EvalContext) -> dict[str, DocScores]:
        logprobs = ctx.model_logprobs(self.key, self._loader(ctx), while_loaded=lambda m: _expert_load(ctx, m))
        return {d: scores_from_logprobs(logprobs[d], ctx.n_bytes(d)) for d in ctx.domains}

    def expert_load(self, ctx: EvalContext) -> dict[str, Any]:
        """Per layer, each expert's share of every domain's test tokens (top-k slots), entropy, dead experts."""
        return ctx.extra(self.key)

    def training_tokens(self, ctx: EvalContext) -> int | None:
        """The experts' training tokens, plus the merged model's own training."""
        manifest = manifest_of(self.folder)
        if manifest is None:
            return None
        experts = experts_training_tokens(ctx, [n for n in manifest.get("experts", []) if n != SEED])
        return None if experts is None else experts + int(manifest["training"]["tokens"])


def _expert_load(ctx: EvalContext, loaded: LoadedModel) -> dict[str, Any]:
    import torch

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
        blocks[d] = torch.tensor(ids[: n * window] if len(ids) >= window else ids, dtype=torch.long).reshape(n, -1)  # (n, T)
    experts = list((loaded.manifest or {}).get("experts") or [f"expert {i}" for i in range(model.config.num_local_experts)])
    return router_health(model, blocks, experts, ctx.batch_size, dead_share=0.05)


# ---------------------------------------------------------------------------- registry entry
def token_moe(setup: Setup, options: LineUpOptions) -> list[System]:
    return [TokenMoESystem("token-moe", "moe", "token-level sparse MoE (experts' FFNs, trained gates)",
                           "token-moe", token_router_dir(setup.workspace.root),
                           "build it with `moe-experts train-router --kind token`")]
