"""Model sizes: the parameter formula, and the parameter-matched generalist's shape."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from moe_experts.config import ModelShape, load_preset
from moe_experts.modeling.checkpoints import count_parameters
from moe_experts.modeling.stages import llama_parameters, parameter_matched_shape


@pytest.mark.parametrize(
    "shape",
    [
        ModelShape(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64),
        ModelShape(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=160, tie_word_embeddings=False),
    ],
)
def test_parameter_formula_matches_transformers(shape: ModelShape):
    config = LlamaConfig(
        vocab_size=500, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, tie_word_embeddings=shape.tie_word_embeddings,
    )
    assert llama_parameters(shape, 500) == count_parameters(LlamaForCausalLM(config))


@pytest.mark.parametrize("preset_name", ["tiny", "small"])
def test_parameter_matched_shape_is_within_five_percent(preset_name: str):
    preset = load_preset(preset_name)
    target = 4 * llama_parameters(preset.model, preset.vocab_size)
    shape = parameter_matched_shape(preset.model, preset.vocab_size, target)
    assert abs(llama_parameters(shape, preset.vocab_size) - target) / target < 0.05
    assert shape.num_hidden_layers == preset.model.num_hidden_layers
    assert shape.hidden_size % shape.num_attention_heads == 0
