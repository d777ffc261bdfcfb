"""Batched decoding with per-row settings (``inference.batch``): the same tokens as one request at a time."""

from __future__ import annotations

import pytest
import torch

from moe_experts.inference.batch import Row, _top_p, decode_batch
from moe_experts.inference.generate import (
    GenerationSettings,
    encode_prompt,
    eos_ids_of,
    generate,
    generate_mixture,
)
from tests.unit.test_generate import PROMPTS, models, tokenizer  # noqa: F401 (fixtures)

GREEDY = GenerationSettings(max_new_tokens=8, temperature=0.0)


def _rows(tokenizer, prompts, settings, weights=()):
    settings = settings if isinstance(settings, list) else [settings] * len(prompts)
    return [Row(encode_prompt(tokenizer, p, None)[0], s, weights) for p, s in zip(prompts, settings)]


def _decode(models, tokenizer, rows):
    return decode_batch(models, tokenizer, rows, eos_ids=eos_ids_of(tokenizer, models), pad_id=tokenizer.pad_token_id)


def test_one_model_greedy_matches_model_generate_row_by_row_and_batched(models, tokenizer):
    """Left padding, the mask and position ids leave each row's answer as it is alone (and as generate gives it)."""
    expected = [generate(models[0], tokenizer, [p], GREEDY)[0].token_ids for p in PROMPTS]
    alone = [_decode(models[:1], tokenizer, _rows(tokenizer, [p], GREEDY))[0].token_ids for p in PROMPTS]
    together = [g.token_ids for g in _decode(models[:1], tokenizer, _rows(tokenizer, PROMPTS, GREEDY))]
    assert alone == expected and together == expected


def test_the_repetition_penalty_is_applied_as_model_generate_applies_it(models, tokenizer):
    settings = GenerationSettings(max_new_tokens=12, temperature=0.0, repetition_penalty=1.8)
    expected = [g.token_ids for g in generate(models[1], tokenizer, PROMPTS, settings)]
    plain = [g.token_ids for g in generate(models[1], tokenizer, PROMPTS, GREEDY)]
    assert [g.token_ids for g in _decode(models[1:], tokenizer, _rows(tokenizer, PROMPTS, settings))] == expected
    assert expected != plain  # the penalty changed something, so the comparison above tested it


def test_a_mixture_batch_matches_the_one_row_mixture_loop(models, tokenizer):
    weights = [[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]]
    rows = [Row(encode_prompt(tokenizer, p, None)[0], GREEDY, w) for p, w in zip(PROMPTS, weights)]
    together = [g.token_ids for g in _decode(models, tokenizer, rows)]
    expected = [generate_mixture(models, w, tokenizer, p, GREEDY).token_ids for p, w in zip(PROMPTS, weights)]
    assert together == expected


def test_each_row_keeps_its_own_settings_and_seed(models, tokenizer):
    """A seeded sampled request gives the same text alone and batched with others that asked other things."""
    sampled = GenerationSettings(max_new_tokens=10, temperature=1.3, top_p=0.9, seed=11)
    alone = _decode(models[:1], tokenizer, _rows(tokenizer, [PROMPTS[1]], sampled))[0]
    mixed = [GREEDY, sampled, GenerationSettings(max_new_tokens=3, temperature=0.7, seed=5)]
    batch = _decode(models[:1], tokenizer, _rows(tokenizer, PROMPTS, mixed))
    assert batch[1].token_ids == alone.token_ids
    assert batch[0].token_ids == generate(models[0], tokenizer, [PROMPTS[0]], GREEDY)[0].token_ids
    assert batch[2].new_tokens <= 3  # a shorter answer leaves the batch early; the others go on
    other_seed = GenerationSettings(max_new_tokens=10, temperature=1.3, top_p=0.9, seed=12)
    draws = {_decode(models[:1], tokenizer, _rows(tokenizer, [PROMPTS[1]], other_seed))[0].token_ids,
             alone.token_ids}
    assert len(draws) == 2  # the seed is what made the two runs agree


def test_a_watch_ends_its_row_or_aborts_it_and_the_others_go_on(models, tokenizer):
    seen: list[int] = []

    def stop_at_third(token: int) -> bool:
        seen.append(token)
        return len(seen) == 3

    def gone(token: int) -> bool:
        raise LookupError("client went away")

    rows = _rows(tokenizer, PROMPTS, GREEDY)
    rows[0].watch, rows[1].watch = stop_at_third, gone
    out = _decode(models[:1], tokenizer, rows)
    assert out[0].finish_reason == "stop" and out[0].token_ids == tuple(seen)
    assert isinstance(out[1], LookupError)
    assert out[2].token_ids == generate(models[0], tokenizer, [PROMPTS[2]], GREEDY)[0].token_ids


@pytest.mark.parametrize("top_p", [0.3, 0.9, 1.0])
def test_top_p_per_row_is_transformers_top_p(top_p):
    from transformers.generation.logits_process import TopPLogitsWarper

    scores = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    ours = _top_p(scores, torch.tensor([top_p, 1.0, top_p, 0.5]))
    for i, p in enumerate([top_p, 1.0, top_p, 0.5]):
        theirs = scores[i:i + 1] if p >= 1.0 else TopPLogitsWarper(p)(None, scores[i:i + 1])
        assert torch.equal(ours[i:i + 1], theirs)


def test_sampling_draws_from_the_distribution_and_never_a_token_of_probability_zero():
    from moe_experts.inference.batch import _Settings

    n = 4000
    rows = [Row([1], GenerationSettings(max_new_tokens=1, temperature=1.0, top_p=0.75, seed=i)) for i in range(n)]
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.clamp(min=1e-30).log().expand(n, -1).clone()  # (n, 5)
    chosen = _Settings(rows, 1).choose(torch.ones((n, 1), dtype=torch.long), [logits])
    counts = torch.bincount(chosen, minlength=5).float() / n
    # top-p 0.75 keeps 0.5 and 0.3 (0.8 reaches 0.75), renormalised to 0.625 and 0.375
    assert abs(counts[0] - 0.625) < 0.03 and abs(counts[1] - 0.375) < 0.03 and counts[2:].sum() == 0
