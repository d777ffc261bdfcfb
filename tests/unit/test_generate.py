"""Generation: top-1 batching, the c-BTM mixture's maths and decoding loop, context fitting, seeds."""

from __future__ import annotations

import copy
import logging

import pytest
from pydantic import ValidationError
import torch

from moe_experts.config import GenerationDefaults
from moe_experts.errors import ConfigError
from moe_experts.inference.generate import (
    Generation,
    GenerationSettings,
    format_prompt,
    generate,
    generate_mixture,
    mixture_next_token_probs,
)
from moe_experts.modeling.checkpoints import check_shared_vocabulary

CONTEXT = 128
GREEDY = GenerationSettings(max_new_tokens=8, temperature=0.0)
PROMPTS = [
    "The quiet river",
    "A patient with fever and a persistent cough was seen in the clinic on Monday morning",
    "def add(a, b):",
]


def _texts(n: int) -> list[str]:
    words = ["the", "river", "city", "law", "court", "patient", "fever", "cough", "def", "return", "import"]
    return [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(n)]


def _tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>",
        clean_up_tokenization_spaces=False,
    )


@pytest.fixture(scope="session")
def tokenizer():
    return _tokenizer(_texts(300), vocab_size=300)


def _model(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=CONTEXT,
        initializer_range=0.2,  # peaked distributions: greedy comparisons are not decided by float noise
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def models(tokenizer):
    return [_model(tokenizer, 1), _model(tokenizer, 2)]


def _record_lengths(monkeypatch, model, logits_lengths: list[int] | None = None) -> list[int]:
    """Wrap the model's forward to record how many tokens each call is given (and how many logits it returns)."""
    lengths: list[int] = []
    logits_lengths = [] if logits_lengths is None else logits_lengths
    original = model.forward

    def forward(*args, **kwargs):
        output = original(*args, **kwargs)
        lengths.append(kwargs["input_ids"].shape[1])
        logits_lengths.append(output.logits.shape[1])
        return output

    monkeypatch.setattr(model, "forward", forward)
    return lengths


# --------------------------------------------------------------------------- settings


def test_settings_from_card_ignores_none_overrides():
    card = GenerationDefaults(max_new_tokens=32, temperature=0.5, top_p=0.9, repetition_penalty=1.2)
    settings = GenerationSettings.from_card(card, temperature=None, max_new_tokens=8, seed=None)
    assert settings == GenerationSettings(max_new_tokens=8, temperature=0.5, top_p=0.9, repetition_penalty=1.2)
    assert GenerationSettings.from_card(card, seed=3).seed == 3


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"max_new_tokens": 5000}, {"temperature": -1.0},
                                 {"temperature": 9.0}, {"top_p": 0.0}, {"repetition_penalty": 0}])
def test_settings_refuse_out_of_range_values(bad):
    """One set of limits: what a card may not set, a request may not ask for either."""
    from moe_experts.config import GenerationDefaults
    from moe_experts.errors import RequestError

    with pytest.raises(RequestError, match=next(iter(bad))):
        GenerationSettings(**bad)
    with pytest.raises(ValidationError):
        GenerationDefaults(**bad)


# --------------------------------------------------------------------------- prompt formatting


def test_chat_template_applied_when_present(tokenizer, models, monkeypatch):
    assert format_prompt(tokenizer, "hello") == "hello"
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = (
        "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}"
    )
    assert format_prompt(chat, "hello") == "<user>hello</user><bot>"

    seen: list[torch.Tensor] = []
    original = models[0].forward

    def forward(*args, **kwargs):
        seen.append(kwargs["input_ids"].clone())
        return original(*args, **kwargs)

    monkeypatch.setattr(models[0], "forward", forward)
    generate(models[0], chat, ["hello"], GenerationSettings(max_new_tokens=1, temperature=0.0))
    assert chat.decode(seen[0][0]) == "<user>hello</user><bot>"  # the template, no bos in front
    seen.clear()
    generate(models[0], tokenizer, ["hello"], GenerationSettings(max_new_tokens=1, temperature=0.0))
    assert tokenizer.decode(seen[0][0]) == "<|endoftext|>hello"  # plain text after a bos, like a training document


# --------------------------------------------------------------------------- top-1


def test_batched_generation_equals_one_prompt_at_a_time(tokenizer, models):
    batched = generate(models[0], tokenizer, PROMPTS, GREEDY, batch_size=8)
    alone = [generate(models[0], tokenizer, [p], GREEDY)[0] for p in PROMPTS]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert all(isinstance(g, Generation) and g.new_tokens == len(g.token_ids) > 0 for g in batched)
    # batch_size=2 splits the list unevenly and must still give the same answers, in order
    assert [g.token_ids for g in generate(models[0], tokenizer, PROMPTS, GREEDY, batch_size=2)] == [
        g.token_ids for g in alone
    ]


def test_generated_text_leaves_out_the_prompt(tokenizer, models):
    (g,) = generate(models[0], tokenizer, ["The quiet river"], GREEDY)
    assert g.finish_reason == "length" and g.new_tokens == GREEDY.max_new_tokens
    assert g.text == tokenizer.decode(list(g.token_ids), skip_special_tokens=True)


def test_same_seed_same_text_different_seed_different_text(tokenizer, models):
    def sample(seed):
        settings = GenerationSettings(max_new_tokens=24, temperature=1.0, seed=seed)
        return generate(models[0], tokenizer, PROMPTS[:2], settings)

    first = sample(7)
    assert [g.token_ids for g in sample(7)] == [g.token_ids for g in first]
    assert [g.token_ids for g in sample(8)] != [g.token_ids for g in first]


def test_seeding_leaves_the_global_rng_alone(tokenizer, models):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate(models[0], tokenizer, ["x"], GenerationSettings(max_new_tokens=3, temperature=1.0, seed=5))
    assert torch.equal(torch.rand(3), expected)


def test_long_prompt_cut_from_the_left_and_answer_clamped(tokenizer, models, monkeypatch, caplog):
    long_prompt = " ".join(_texts(40))
    full = tokenizer(long_prompt, add_special_tokens=False)["input_ids"]
    assert len(full) > 3 * CONTEXT
    lengths = _record_lengths(monkeypatch, models[0])
    with caplog.at_level(logging.WARNING, logger="moe_experts.inference.generate"):
        (g,) = generate(models[0], tokenizer, [long_prompt], GenerationSettings(max_new_tokens=500, temperature=0.0))
    max_new = CONTEXT - CONTEXT // 4  # the prompt keeps a quarter of the context
    assert lengths[0] == CONTEXT // 4  # first forward: the whole (cut) prompt
    assert g.new_tokens <= max_new and (g.finish_reason == "eos" or g.new_tokens == max_new)
    assert lengths[0] + g.new_tokens <= CONTEXT
    assert len([r for r in caplog.records if "context is 128 tokens" in r.message]) == 1


def test_cut_keeps_the_end_of_the_prompt(tokenizer, models, monkeypatch):
    long_prompt = " ".join(_texts(40))
    full = tokenizer(long_prompt, add_special_tokens=False)["input_ids"]
    seen: list[list[int]] = []
    original = models[0].forward

    def forward(*args, **kwargs):
        seen.append(kwargs["input_ids"][0].tolist())
        return original(*args, **kwargs)

    monkeypatch.setattr(models[0], "forward", forward)
    generate_mixture([models[0]], [1.0], tokenizer, long_prompt, GenerationSettings(max_new_tokens=64, temperature=0))
    budget = CONTEXT - 64
    assert seen[0] == [tokenizer.bos_token_id] + full[-(budget - 1) :]


def test_eos_stops_generation(tokenizer):
    model = _model(tokenizer, 3)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # uniform logits: argmax is the lowest id, the eos
    assert tokenizer.eos_token_id == 0
    (g,) = generate(model, tokenizer, ["hello"], GREEDY)
    mixed = generate_mixture([model], [1.0], tokenizer, "hello", GREEDY)
    for out in (g, mixed):
        assert (out.finish_reason, out.new_tokens, out.text, out.token_ids) == ("eos", 1, "", (0,))


# --------------------------------------------------------------------------- mixture


def test_mixture_probs_are_the_weighted_sum_of_softmaxes():
    gen = torch.Generator().manual_seed(0)
    l0, l1, l2 = (torch.randn(50, generator=gen) * 3 for _ in range(3))
    p = mixture_next_token_probs([l0, l1, l2], [0.2, 0.6, 0.0])  # renormalised to 0.25 / 0.75
    expected = 0.25 * torch.softmax(l0, -1) + 0.75 * torch.softmax(l1, -1)
    torch.testing.assert_close(p, expected)
    assert p.dtype == torch.float32 and p.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_mixture_first_token_is_the_argmax_of_the_hand_mixed_distribution(tokenizer, models):
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer("The quiet river", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        l0, l1 = (m(input_ids=ids).logits[0, -1] for m in models)  # (V,)
    expected = 0.3 * torch.softmax(l0, -1) + 0.7 * torch.softmax(l1, -1)
    assert expected.argmax() != l0.argmax() or expected.argmax() != l1.argmax()  # the mix is not just one expert
    g = generate_mixture(models, [0.3, 0.7], tokenizer, "The quiet river", GREEDY)
    assert g.token_ids[0] == int(expected.argmax())


def test_mixture_with_one_active_expert_equals_top1_and_never_runs_the_other(tokenizer, models, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a zero-weight expert was run")

    top1 = generate(models[0], tokenizer, PROMPTS, GREEDY)
    monkeypatch.setattr(models[1], "forward", refuse)
    mixed = [generate_mixture(models, [1.0, 0.0], tokenizer, p, GREEDY) for p in PROMPTS]
    assert [g.token_ids for g in mixed] == [g.token_ids for g in top1]
    assert [g.text for g in mixed] == [g.text for g in top1]


def test_mixture_of_a_model_with_itself_equals_the_model(tokenizer, models):
    top1 = generate(models[1], tokenizer, PROMPTS[:2], GREEDY)
    mixed = [generate_mixture([models[1], models[1]], [0.3, 0.7], tokenizer, p, GREEDY) for p in PROMPTS[:2]]
    assert [g.token_ids for g in mixed] == [g.token_ids for g in top1]


def test_mixture_uses_each_experts_kv_cache(tokenizer, models, monkeypatch):
    logits_lengths: list[int] = []
    lengths = [_record_lengths(monkeypatch, m, logits_lengths) for m in models]
    g = generate_mixture(models, [0.5, 0.5], tokenizer, "The quiet river", GREEDY)
    prompt_len = 1 + len(tokenizer("The quiet river", add_special_tokens=False)["input_ids"])
    for recorded in lengths:
        # one forward per generated token: the prompt first, then only the newest token
        assert recorded == [prompt_len] + [1] * (g.new_tokens - 1)
    assert set(logits_lengths) == {1}  # logits_to_keep: the prompt step does not compute (T, V) logits


def test_mixture_sampling_is_seeded(tokenizer, models):
    def sample(seed):
        settings = GenerationSettings(max_new_tokens=24, temperature=1.0, top_p=0.95, repetition_penalty=1.1, seed=seed)
        return generate_mixture(models, [0.4, 0.6], tokenizer, "The quiet river", settings)

    assert sample(11).token_ids == sample(11).token_ids
    assert sample(11).token_ids != sample(12).token_ids


def test_mixture_temperature_and_top_p_follow_the_mixture(tokenizer, models):
    # A tiny top-p keeps only the most likely token: sampling must then equal greedy decoding.
    greedy = generate_mixture(models, [0.4, 0.6], tokenizer, "The quiet river", GREEDY)
    nucleus = GenerationSettings(max_new_tokens=GREEDY.max_new_tokens, temperature=1.0, top_p=1e-6, seed=0)
    assert generate_mixture(models, [0.4, 0.6], tokenizer, "The quiet river", nucleus).token_ids == greedy.token_ids


def test_mixture_repetition_penalty_discourages_repeats(tokenizer, models):
    def distinct(penalty):
        settings = GenerationSettings(max_new_tokens=20, temperature=0.0, repetition_penalty=penalty)
        return len(set(generate_mixture(models, [0.5, 0.5], tokenizer, "the", settings).token_ids))

    assert distinct(3.0) > distinct(1.0)


@pytest.mark.parametrize(
    ("weights", "message"),
    [([], "2 models but 0 weights"), ([1.0, -0.5], ">= 0"), ([0.0, 0.0], "all zero"), ([1.0], "2 models but 1 weights")],
)
def test_mixture_refuses_bad_weights(tokenizer, models, weights, message):
    with pytest.raises(ValueError, match=message):
        generate_mixture(models, weights, tokenizer, "hi", GREEDY)


def test_mixture_refuses_empty_models(tokenizer):
    with pytest.raises(ValueError, match="no weights"):
        generate_mixture([], [], tokenizer, "hi", GREEDY)


# --------------------------------------------------------------------------- vocabulary


def test_shared_vocabulary_accepts_one_tokenizer_and_refuses_two(tokenizer):
    check_shared_vocabulary({"law": tokenizer, "medicine": copy.deepcopy(tokenizer)})
    other = _tokenizer(_texts(300)[::-1] + ["completely different words for another vocabulary"] * 5, vocab_size=280)
    with pytest.raises(ConfigError) as caught:
        check_shared_vocabulary({"law": tokenizer, "medicine": tokenizer, "code": other})
    text = str(caught.value)
    assert "'code'" in text and "'law'" in text and "'medicine'" in text and "`top_k` of 1" in text
