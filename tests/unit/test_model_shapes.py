"""Model sizes: the one parameter and FLOP formula (modeling/flops.py), and the parameter-matched generalist's shape.

Every count is checked against ``sum(p.numel() for p in model.parameters())`` of a real transformers model.
"""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from moe_experts.config import ModelShape, load_preset
from moe_experts.modeling.flops import llama_parameters, model_size
from moe_experts.modeling.generalist import parameter_matched_shape

TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("tied", [True, False])
def test_llama_parameters_and_flops_match_transformers(tied: bool):
    config = LlamaConfig(**TINY, tie_word_embeddings=tied)
    size = model_size(config, context=64)
    assert size.total_parameters == size.active_parameters == _numel(LlamaForCausalLM(config))
    # 2 x (layers x (attention + SwiGLU) + head) + 2 x layers x context x width
    per_layer = 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64
    assert size.flops_per_token == 2 * (2 * per_layer + 256 * 32) + 2 * 2 * 64 * 32


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("head_dim", [None, 16])  # None: hidden / heads; 16: Mixtral's own head_dim, wider attention
def test_mixtral_parameters_match_transformers_and_count_only_routed_experts_as_active(tied: bool, head_dim: int | None):
    config = MixtralConfig(**TINY, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=tied,
                           **({"head_dim": head_dim} if head_dim else {}))
    size = model_size(config, context=64)
    assert size.total_parameters == _numel(MixtralForCausalLM(config))
    assert size.total_parameters - size.active_parameters == 2 * 2 * 3 * 32 * 64  # two idle experts' FFNs, two layers
    dense = model_size(LlamaConfig(**TINY, tie_word_embeddings=tied, **({"head_dim": head_dim} if head_dim else {})), 64)
    # the router's gates (E, d) a layer are all a top-2 MoE multiplies beyond a dense model with two FFNs
    assert size.flops_per_token - dense.flops_per_token == 2 * 2 * (3 * 32 * 64 + 4 * 32)


@pytest.mark.parametrize(
    "shape",
    [
        ModelShape(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64),
        ModelShape(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=160, tie_word_embeddings=False),
    ],
)
def test_a_preset_shape_counts_like_the_llama_it_builds(shape: ModelShape):
    config = LlamaConfig(
        vocab_size=500, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, tie_word_embeddings=shape.tie_word_embeddings,
    )
    assert llama_parameters(shape, 500) == model_size(config, 1).total_parameters == _numel(LlamaForCausalLM(config))


@pytest.mark.parametrize("preset_name", ["tiny", "small"])
def test_parameter_matched_shape_is_within_five_percent(preset_name: str):
    preset = load_preset(preset_name)
    target = 4 * llama_parameters(preset.model, preset.vocab_size)
    shape = parameter_matched_shape(preset.model, preset.vocab_size, target)
    assert abs(llama_parameters(shape, preset.vocab_size) - target) / target < 0.05
    assert shape.num_hidden_layers == preset.model.num_hidden_layers
    assert shape.hidden_size % shape.num_attention_heads == 0
