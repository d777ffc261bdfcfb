"""Evaluator scoring against hand-computed values: perplexity, bits per byte, mixtures, bootstrap."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from moe_experts.evaluation.scoring import (
    DocScores,
    mixture_logprobs,
    paired_difference,
    resample_counts,
    encode_documents,
    scores_from_logprobs,
    stream_logprobs,
)


def token_logprobs(model, tokenizer, texts, *, window, batch_size):
    """What the evaluation context does for one model: encode, then score."""
    return stream_logprobs(model, encode_documents(tokenizer, texts), pad_id=tokenizer.eos_token_id,
                           window=window, batch_size=batch_size)


class CharTokenizer:
    """One token per character (ids 1..), eos = 0."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": [1 + (ord(c) % 50) for c in text]}


class FixedLM(torch.nn.Module):
    """Next-token distribution that ignores the context: softmax(bias) at every position."""

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.log(torch.tensor(probs)), requires_grad=False)

    def forward(self, input_ids):
        b, t = input_ids.shape
        return SimpleNamespace(logits=self.bias.expand(b, t, -1).clone())


def test_uniform_model_has_perplexity_vocab_size_and_known_bits_per_byte():
    vocab = 64
    model, tok = FixedLM([1.0 / vocab] * vocab), CharTokenizer()
    texts = ["hello world", "é" * 7, "a" * 300]  # a multi-byte character, and a text longer than the window
    lps = token_logprobs(model, tok, texts, window=16, batch_size=3)
    # every token after the leading eos is predicted exactly once: the text's characters and the final eos
    assert [len(lp) for lp in lps] == [len(t) + 1 for t in texts]
    scores = scores_from_logprobs(lps, np.array([len(t.encode()) for t in texts]))
    assert scores.perplexity == pytest.approx(vocab, rel=1e-5)
    n_tokens = sum(len(t) + 1 for t in texts)
    n_bytes = 11 + 14 + 300  # "é" is two bytes in UTF-8
    assert scores.bits_per_byte == pytest.approx(n_tokens * math.log2(vocab) / n_bytes, rel=1e-5)


def test_known_token_probabilities():
    # p(eos)=0.5, p(token 1..)=rest spread: the log-prob of each target is looked up, not averaged
    probs = [0.5] + [0.5 / 63] * 63
    lps = token_logprobs(FixedLM(probs), CharTokenizer(), ["ab"], window=8, batch_size=1)
    assert lps[0].tolist() == pytest.approx([math.log(0.5 / 63)] * 2 + [math.log(0.5)], rel=1e-5)


def test_window_boundaries_do_not_change_a_context_free_score():
    model = FixedLM(list(np.linspace(1, 2, 64) / np.linspace(1, 2, 64).sum()))
    a = token_logprobs(model, CharTokenizer(), ["x" * 100], window=4, batch_size=2)[0]
    b = token_logprobs(model, CharTokenizer(), ["x" * 100], window=128, batch_size=1)[0]
    assert np.allclose(a, b)


def _fast_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<eos>", "<unk>", *words])}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="<unk>")


class CountingTokenizer:
    """Wraps a fast tokenizer and counts the texts it encodes."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0
        self.backend_tokenizer, self.eos_token_id = inner.backend_tokenizer, inner.eos_token_id

    def __call__(self, text, **kwargs):
        self.calls += 1
        return self.inner(text, **kwargs)


def test_models_that_share_a_tokenizer_share_one_encoding_of_the_documents():
    from moe_experts.evaluation.context import EvalContext, EvalDocs
    from moe_experts.evaluation.scoring import tokenizer_key

    same_a, same_b = _fast_tokenizer(["a", "b", "c"]), _fast_tokenizer(["a", "b", "c"])
    other = _fast_tokenizer(["c", "b", "a"])  # the same words, other ids: it must not reuse their encoding
    assert tokenizer_key(same_a) == tokenizer_key(same_b) != tokenizer_key(other)
    assert tokenizer_key(CharTokenizer()) is None  # no serialised pipeline to compare: never shared

    texts = ["a b c", "c c a b"]
    ctx = EvalContext(setup=None, docs={"x": EvalDocs("x", ["1", "2"], texts)})
    first, second = CountingTokenizer(same_a), CountingTokenizer(same_b)
    ids_a, ids_b = ctx.encoded(first, "x"), ctx.encoded(second, "x")
    assert (first.calls, second.calls) == (2, 0)
    assert [s.tolist() for s in ids_b] == [[0, 2, 3, 4, 0], [0, 4, 4, 2, 3, 0]] == [s.tolist() for s in ids_a]
    assert [s.tolist() for s in ctx.encoded(other, "x")] == [[0, 4, 3, 2, 0], [0, 2, 2, 4, 3, 0]]
    plain = CharTokenizer()
    assert [s.tolist() for s in ctx.encoded(plain, "x")] == [[0, *plain("a b c")["input_ids"], 0],
                                                                [0, *plain("c c a b")["input_ids"], 0]]


def test_mixture_is_log_of_weighted_probabilities():
    p1, p2 = np.log(np.array([0.2, 0.9], dtype=np.float32)), np.log(np.array([0.6, 0.1], dtype=np.float32))
    mixed = mixture_logprobs([p1, p2], [0.75, 0.25])
    assert np.exp(mixed) == pytest.approx([0.75 * 0.2 + 0.25 * 0.6, 0.75 * 0.9 + 0.25 * 0.1], rel=1e-6)


def _scores(nll) -> DocScores:
    nll = np.asarray(nll, dtype=np.float64)
    return DocScores(nll=nll, tokens=np.full(len(nll), 10), bytes=np.full(len(nll), 20))


def test_bootstrap_of_a_constant_ratio_is_exact_and_identical_systems_differ_by_zero():
    rng = np.random.default_rng(0)
    base = _scores(rng.uniform(5, 20, size=50))
    worse = _scores(base.nll * 1.1)
    counts = [resample_counts(50, 300, rng)]
    d = paired_difference([worse], [base], counts, 0.95)
    assert d.ratio == pytest.approx(1.1) and d.ratio_ci == pytest.approx((1.1, 1.1))
    assert d.diff == pytest.approx(worse.bits_per_byte - base.bits_per_byte) and d.diff_ci[0] > 0
    same = paired_difference([base], [base], counts, 0.95)
    assert same.diff == 0 and same.diff_ci == (0.0, 0.0) and same.ratio_ci == (1.0, 1.0)


def test_bootstrap_interval_covers_the_point_and_narrows_with_more_documents():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 2000):
        base = _scores(rng.uniform(5, 20, size=n))
        other = _scores(base.nll + rng.normal(0, 2, size=n))
        d = paired_difference([other], [base], [resample_counts(n, 500, rng)], 0.95)
        assert d.diff_ci[0] <= d.diff <= d.diff_ci[1]
        widths.append(d.diff_ci[1] - d.diff_ci[0])
    assert widths[1] < widths[0] / 4


def test_macro_difference_averages_domains():
    a1, a2 = _scores([10.0] * 5), _scores([20.0] * 5)
    b1, b2 = _scores([11.0] * 5), _scores([22.0] * 5)
    counts = [np.ones((100, 5)), np.ones((100, 5))]
    d = paired_difference([b1, b2], [a1, a2], counts, 0.9)
    assert d.ratio == pytest.approx(np.mean([b1.bits_per_byte, b2.bits_per_byte]) / np.mean([a1.bits_per_byte, a2.bits_per_byte]))
