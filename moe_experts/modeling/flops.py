"""Parameters and forward FLOPs of a Llama- or Mixtral-style causal LM, from its shape alone.

One formula, used wherever a size is needed before (or instead of) building the
model: the parameter-matched generalist's width, the memory a token-level merge
needs, and the cost columns of the evaluation report. Tests compare it with
``sum(p.numel() for p in model.parameters())`` of real transformers models.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from moe_experts.config import ModelShape


@dataclass(frozen=True)
class ModelSize:
    total_parameters: int
    active_parameters: int  # what one token multiplies through: a sparse MoE layer's routed experts only
    flops_per_token: int  # forward pass, at the context the size was computed for


def model_size(config: Any, context: int) -> ModelSize:
    """Parameters (total, active) and forward FLOPs per token of a Llama/Mixtral-style config.

    ``config`` needs the transformers names: hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads, vocab_size, and optionally num_key_value_heads, head_dim,
    tie_word_embeddings, num_local_experts, num_experts_per_tok.

    FLOPs per token = 2 x the weights a token multiplies (attention and FFN projections of every
    layer, only the routed experts of a sparse MoE layer, and the output head) + 2 x layers x
    context x attention width for the attention scores and values (Kaplan et al. 2020), at a
    full context of ``context`` tokens. Embedding look-ups cost nothing.
    """
    d, layers, ff = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    attn = 2 * d * heads * head_dim + 2 * d * kv * head_dim  # q, o and k, v projections
    ffn = 3 * d * ff  # gate, up, down (SwiGLU)
    experts = getattr(config, "num_local_experts", None)
    active_experts = getattr(config, "num_experts_per_tok", None)
    norms = (2 * layers + 1) * d  # two RMSNorms a layer, one final
    embed = config.vocab_size * d
    head = 0 if getattr(config, "tie_word_embeddings", False) else config.vocab_size * d
    if experts:
        layer_total = attn + experts * ffn + d * experts  # + the gate (E, d)
        layer_active = attn + active_experts * ffn + d * experts
    else:
        layer_total = layer_active = attn + ffn
    total = layers * layer_total + norms + embed + head
    active = layers * layer_active + norms + embed + head
    matmul = layers * layer_active + config.vocab_size * d  # the head multiplies even when tied
    flops = 2 * matmul + 2 * layers * context * heads * head_dim
    return ModelSize(int(total), int(active), int(flops))


def llama_parameters(shape: ModelShape, vocab_size: int) -> int:
    """Parameters of a starter (Llama) model of this preset shape and vocabulary."""
    config = SimpleNamespace(**shape.model_dump(), vocab_size=vocab_size)
    return model_size(config, context=1).total_parameters
