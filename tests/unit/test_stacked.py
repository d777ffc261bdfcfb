"""Stacked experts (``inference.stacked``): rows of different experts in one pass, each exactly its own expert."""

from __future__ import annotations

import pytest
import torch

from moe_experts.inference.batch import Row, decode_batch
from moe_experts.inference.generate import GenerationSettings, encode_prompt, eos_ids_of
from moe_experts.inference.stacked import StackedExperts, stack_problem, stackable_groups
from tests.unit.test_generate import PROMPTS, _model, tokenizer  # noqa: F401 (fixture)

GREEDY = GenerationSettings(max_new_tokens=10, temperature=0.0)


@pytest.fixture(scope="module")
def experts(tokenizer):  # noqa: F811
    return [_model(tokenizer, seed) for seed in (3, 4, 5)]


def _rows(tokenizer, prompts, settings=GREEDY):  # noqa: F811
    return [Row(encode_prompt(tokenizer, p, None)[0], settings) for p in prompts]


def _decode(models, tokenizer, rows):  # noqa: F811
    return decode_batch(models, tokenizer, rows, eos_ids=eos_ids_of(tokenizer, models), pad_id=tokenizer.pad_token_id)


def test_each_row_gets_its_own_experts_logits(experts, tokenizer):  # noqa: F811
    """A batch of left-padded prompts for different experts: each row's last-position logits equal its expert's."""
    stack = StackedExperts(experts)
    prompts = PROMPTS + ["law court", "import the river city"]
    which = [2, 0, 1, 0, 2]
    ids = [encode_prompt(tokenizer, p, None)[0] for p in prompts]
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = stack.bind(which)(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=None)
        for i, (row, e) in enumerate(zip(ids, which)):
            alone = experts[e](input_ids=torch.tensor([row])).logits[0, -1]
            torch.testing.assert_close(out.logits[i, -1], alone, rtol=1e-4, atol=1e-4)
            others = [experts[o](input_ids=torch.tensor([row])).logits[0, -1] for o in range(3) if o != e]
            assert all((out.logits[i, -1] - x).abs().max() > 1e-2 for x in others)  # not someone else's


def test_decoding_a_mixed_batch_gives_each_row_its_experts_greedy_answer(experts, tokenizer):  # noqa: F811
    """Rows leave the batch at different lengths (and take their cache rows and experts with them)."""
    stack = StackedExperts(experts)
    prompts = PROMPTS * 2
    which = [0, 1, 2, 2, 1, 0]
    lengths = [10, 3, 7, 10, 1, 5]
    rows = [Row(encode_prompt(tokenizer, p, None)[0], GenerationSettings(max_new_tokens=n, temperature=0.0))
            for p, n in zip(prompts, lengths)]
    together = _decode([stack.bind(which)], tokenizer, rows)
    for r, e, g in zip(rows, which, together):
        alone = _decode([experts[e]], tokenizer, [r])[0]
        assert g.token_ids == alone.token_ids and g.finish_reason == alone.finish_reason
    assert len({g.token_ids for g in together[:3]}) == 3


def test_a_seeded_sampled_row_is_the_same_stacked_or_alone(experts, tokenizer):  # noqa: F811
    sampled = GenerationSettings(max_new_tokens=8, temperature=1.2, top_p=0.9, seed=7)
    rows = _rows(tokenizer, PROMPTS, sampled)
    together = _decode([StackedExperts(experts).bind([1, 2, 1])], tokenizer, rows)
    assert together[1].token_ids == _decode([experts[2]], tokenizer, [rows[1]])[0].token_ids


def test_what_cannot_be_stacked_says_why(experts, tokenizer):  # noqa: F811
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=experts[0].config.max_position_embeddings))
    assert stack_problem(experts) is None
    assert stack_problem(experts[:1]) == "fewer than two experts"
    assert stack_problem([experts[0], wider]) == "the experts differ in hidden_size"
    with pytest.raises(ValueError, match="cannot be stacked: the experts differ in hidden_size"):
        StackedExperts([experts[0], wider])
    with pytest.raises(ValueError, match="expert index 3 is out of range"):
        StackedExperts(experts).bind([0, 3])


def test_the_largest_set_that_stacks_is_found_and_the_rest_named_with_the_reason(experts, tokenizer):  # noqa: F811
    from transformers import LlamaConfig, LlamaForCausalLM

    def wider() -> LlamaForCausalLM:
        return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                            max_position_embeddings=experts[0].config.max_position_embeddings))

    names, apart = stackable_groups({"odd": wider(), "a": experts[0], "b": experts[1], "c": experts[2]})
    assert names == ["a", "b", "c"] and apart == {"odd": "the experts differ in hidden_size"}
    names, apart = stackable_groups({"odd": wider(), "a": experts[0]})
    assert names == [] and apart == {"odd": "the experts differ in hidden_size", "a": "the experts differ in hidden_size"}
