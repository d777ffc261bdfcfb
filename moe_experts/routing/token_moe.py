"""Merge Llama-architecture experts into one Mixtral sparse-MoE checkpoint (Branch-Train-MiX).

Each expert's feed-forward block becomes one MoE expert in every layer (the
seed's as an extra one on request); attention, norms, embeddings and the output
head are averaged across the experts (BTX) or taken from the seed. The gate of
each layer starts from the experts' mean hidden state at that layer's MoE input
on their own domain (as mergekit's ``hidden`` gate mode does), or randomly.

transformers 5 stores Mixtral experts fused, per layer:
``mlp.experts.gate_up_proj`` (E, 2 * ffn, d) whose first half is Llama's
``gate_proj`` and second half ``up_proj`` (``forward`` chunks it in that order),
and ``mlp.experts.down_proj`` (E, d, ffn); the gate is ``mlp.gate.weight`` (E, d).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from moe_experts.errors import ConfigError
from moe_experts.modeling.checkpoints import check_shared_vocabulary
from moe_experts.modeling.flops import model_size

logger = logging.getLogger(__name__)

MergeRest = Literal["average", "seed"]
GateInit = Literal["hidden", "random"]
SHARED_SUFFIXES = (  # per-layer weights that are not the FFN: merged, not stacked
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight",
)


@dataclass(frozen=True)
class MergeSpec:
    experts: tuple[str, ...]  # MoE expert order: the cards' experts, then "seed" when included
    merge_rest: MergeRest = "average"
    top_k: int = 2
    router_aux_loss_coef: float = 0.01


def check_mergeable(models: Mapping[str, Any], tokenizers: Mapping[str, Any]) -> None:
    """Refuse experts that cannot share one MoE: other architectures, shapes or vocabularies (with the reason)."""
    kinds = {name: type(m).__name__ for name, m in models.items()}
    if set(kinds.values()) != {"LlamaForCausalLM"}:
        described = ", ".join(f"{n}: {k}" for n, k in kinds.items())
        raise ConfigError(
            f"the token-level router merges Llama-architecture experts only; got {described}",
            hint="use the document router (`moe-experts train-router --kind doc`), which serves any mix of models",
        )
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "max_position_embeddings", "tie_word_embeddings", "hidden_act")
    shapes = {name: tuple(getattr(m.config, k, None) for k in keys) for name, m in models.items()}
    if len(set(shapes.values())) > 1:
        first = next(iter(shapes))
        differ = [f"{n}: " + ", ".join(f"{k}={v}" for k, v, w in zip(keys, s, shapes[first]) if v != w)
                  for n, s in shapes.items() if s != shapes[first]]
        raise ConfigError(
            f"the experts do not share one shape (compared with '{first}'): " + "; ".join(differ),
            hint="merge only experts branched from the same seed; the document router serves the others",
        )
    try:
        check_shared_vocabulary(tokenizers)
    except ConfigError as exc:
        raise ConfigError(exc.message.replace("the top-k mixture", "the token-level MoE"),
                          hint="the document router serves experts with different tokenizers") from None


def merged_bytes(config: Any, n_experts: int, dtype_bytes: int = 4) -> int:
    """Bytes of the merged MoE's weights (for the memory check before merging)."""
    return model_size(_moe_config(config, n_experts, 2, 0.0), context=1).total_parameters * dtype_bytes


def check_memory(config: Any, n_experts: int, n_sources: int) -> None:
    """Refuse a merge whose source models plus the merged one would not fit in this machine's memory."""
    need = merged_bytes(config, n_experts) * 2 + merged_bytes(config, 1) * n_sources  # merged + its state dict + sources
    try:
        have = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise ConfigError(
            f"the merge needs about {need / 2**30:.1f} GiB of memory ({n_sources} source models and the merged "
            f"{n_experts}-expert model); {have / 2**30:.1f} GiB is available",
            hint="free memory, merge fewer experts (include_seed: false in the recipe), or run on a larger machine",
        )


def _moe_config(llama_config: Any, n_experts: int, top_k: int, aux_coef: float) -> Any:
    from transformers import MixtralConfig

    c = llama_config
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise ConfigError("experts with attention or MLP biases cannot become Mixtral layers (Mixtral has none)")
    rope = getattr(c, "rope_parameters", None) or {"rope_type": "default", "rope_theta": getattr(c, "rope_theta", 10000.0)}
    return MixtralConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(rope),
        tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
        num_local_experts=n_experts,
        num_experts_per_tok=top_k,
        router_aux_loss_coef=aux_coef,
        output_router_logits=False,  # switched on for training
        sliding_window=None,
        attention_dropout=0.0,
    )


def merge_experts(experts: Sequence[Any], rest: Sequence[Any], spec: MergeSpec) -> Any:
    """A MixtralForCausalLM whose layer-l expert i is ``experts[i]``'s layer-l FFN; the rest averaged over ``rest``.

    ``rest`` is every expert for BTX averaging, or just the seed (``--merge-rest seed``). Gates are
    left at zero (uniform routing) until ``init_gates`` sets them.
    """
    import torch
    from transformers import MixtralForCausalLM

    if not 1 <= spec.top_k <= len(experts):
        raise ConfigError(f"top_k must be between 1 and {len(experts)} (the number of MoE experts), got {spec.top_k}")
    base = experts[0].config
    config = _moe_config(base, len(experts), spec.top_k, spec.router_aux_loss_coef)
    with torch.device("meta"):
        moe = MixtralForCausalLM(config)
    states = [m.state_dict() for m in experts]
    rest_states = [m.state_dict() for m in rest]
    merged: dict[str, torch.Tensor] = {}

    def mean(key: str) -> torch.Tensor:
        first = rest_states[0][key].float()
        # shared-trunk branches (DEMix) carry the seed's tensors unchanged: copy them, so the merge stays exact
        if all(torch.equal(s[key].float(), first) for s in rest_states[1:]):
            return first.clone()
        return torch.stack([s[key].float() for s in rest_states]).mean(dim=0)

    for key in ("model.embed_tokens.weight", "model.norm.weight"):
        merged[key] = mean(key)
    if not config.tie_word_embeddings:
        merged["lm_head.weight"] = mean("lm_head.weight")
    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        for suffix in SHARED_SUFFIXES:
            merged[p + suffix] = mean(p + suffix)
        merged[p + "mlp.experts.gate_up_proj"] = torch.stack([
            torch.cat([s[p + "mlp.gate_proj.weight"], s[p + "mlp.up_proj.weight"]], dim=0).float() for s in states
        ])  # (E, 2 * ffn, d)
        merged[p + "mlp.experts.down_proj"] = torch.stack([s[p + "mlp.down_proj.weight"].float() for s in states])  # (E, d, ffn)
        merged[p + "mlp.gate.weight"] = torch.zeros(len(experts), config.hidden_size)  # (E, d)
    moe.load_state_dict(merged, strict=False, assign=True)
    if config.tie_word_embeddings:
        moe.tie_weights()
    # buffers (rotary inverse frequencies) are computed, not stored: rebuild them on the CPU
    moe.model.rotary_emb = type(moe.model.rotary_emb)(config=config)
    missing = [n for n, t in list(moe.named_parameters()) + list(moe.named_buffers()) if t.is_meta]
    if missing:
        raise RuntimeError(f"merge left weights unset: {missing[:5]}")  # a transformers layout this code does not know
    moe.eval()
    return moe


GATE_SUFFIX = "mlp.gate.weight"  # a Mixtral layer's router (not the experts' gate_up_proj)


def router_z_loss(outputs: Any) -> Any:
    """ST-MoE's router z-loss of one forward pass: per layer, the mean over tokens of logsumexp(gate logits)^2;
    averaged over layers. Needs the model run with ``output_router_logits``."""
    import torch

    logits = getattr(outputs, "router_logits", None)
    if not logits:
        raise ValueError("the model returned no router logits: run it with config.output_router_logits = True")
    return torch.stack([torch.logsumexp(layer.float(), dim=-1).square().mean() for layer in logits]).mean()


def moe_input_hidden_states(model: Any, input_ids: Any) -> list[Any]:
    """Per layer, the FFN's input (post-attention RMSNorm output) of a Llama model: [(B, T, d)] * L."""
    import torch

    captured: list[Any] = []
    hooks = [layer.post_attention_layernorm.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
             for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(input_ids=input_ids)
    finally:
        for h in hooks:
            h.remove()
    return captured


def init_gates(moe: Any, mean_hidden: Sequence[Sequence[Any]], *, mode: GateInit, seed: int = 0) -> None:
    """Set every layer's gate: row i = expert i's mean MoE-input hidden state on its domain (unit length, scaled).

    ``mean_hidden[i][l]`` is a (d,) vector. With ``random`` the rows are drawn from N(0, 0.02).
    """
    import torch

    n_experts, d = moe.config.num_local_experts, moe.config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    for layer_idx, layer in enumerate(moe.model.layers):
        if mode == "random":
            rows = torch.randn(n_experts, d, generator=generator) * 0.02
        else:
            rows = torch.stack([mean_hidden[i][layer_idx].float() for i in range(n_experts)])  # (E, d)
            rows = rows - rows.mean(dim=0, keepdim=True)  # what sets the experts apart, not what they share
            rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            # hidden states have RMS ~1 after the norm, so |h| ~ sqrt(d): logits of order 1
            rows = rows / d**0.5 * 4.0
        with torch.no_grad():
            layer.mlp.gate.weight.copy_(rows.to(layer.mlp.gate.weight.dtype))
