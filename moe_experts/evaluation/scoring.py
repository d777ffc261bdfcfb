"""Per-document language-modelling scores and paired bootstrap intervals.

Every system is scored document by document: a document is tokenised as
``<eos> text <eos>`` and cut into windows of the model's context that overlap
by one token, so every token after the first is predicted exactly once (the
same rule as the sanity check). The per-token log-probabilities are kept, so a
token-by-token mixture of experts that share a tokenizer costs no extra forward
pass.

Bits per byte = total negative log-likelihood / ln 2 / UTF-8 bytes of the text;
it is comparable across tokenizers, perplexity (per token) is not.

Confidence intervals are paired percentile bootstraps over documents: the same
resampled documents for every system of a domain, so a difference against the
generalist is not blurred by which documents happened to be drawn.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LN2 = math.log(2)


@dataclass(frozen=True)
class DocScores:
    """One system on one domain's documents: per-document totals (N,)."""

    nll: np.ndarray  # nats, float64
    tokens: np.ndarray  # predicted tokens, int64 (0 where a mixture spans tokenizers)
    bytes: np.ndarray  # UTF-8 bytes of each text, int64

    @property
    def bits_per_byte(self) -> float:
        return float(self.nll.sum() / LN2 / max(int(self.bytes.sum()), 1))

    @property
    def perplexity(self) -> float | None:
        n = int(self.tokens.sum())
        return math.exp(float(self.nll.sum()) / n) if n > 0 else None


def encode_documents(tokenizer: Any, texts: Sequence[str]) -> list[np.ndarray]:
    """Each text as the id stream that is scored: ``<eos> ids <eos>`` (int64)."""
    eos = tokenizer.eos_token_id
    return [np.array([eos, *tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"], eos], dtype=np.int64)
            for t in texts]


def tokenizer_key(tokenizer: Any) -> str | None:
    """A key equal for tokenizers that split every text alike (None: cannot tell, do not share encodings).

    A fast tokenizer is its serialised pipeline (vocabulary, merges, normalisation) plus its eos id, so
    two models saved with the same tokenizer share one encoding of the test documents.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    digest = hashlib.sha256(backend.to_str().encode("utf-8"))
    digest.update(repr(tokenizer.eos_token_id).encode())
    return digest.hexdigest()


def count_stream_windows(streams: Sequence[Sequence[int] | np.ndarray], window: int) -> int:
    """How many windows ``stream_logprobs`` will run (for a progress bar)."""
    if window < 2:  # counted before scoring, so it checks first
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    return sum(max(1, math.ceil((len(s) - 1) / (window - 1))) for s in streams)


def stream_logprobs(
    model: Any, streams: Sequence[Sequence[int] | np.ndarray], *, pad_id: int, window: int, batch_size: int, progress: Any = None
) -> list[np.ndarray]:
    """log p(token | context) of every predicted token, one float32 array per stream of ``encode_documents``
    (the closing eos included; the opening one is context only). ``pad_id`` pads short windows (never scored)."""
    import torch

    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    # (doc, start) of every window; a document of n ids has n-1 targets.
    out = [np.zeros(len(s) - 1, dtype=np.float32) for s in streams]
    jobs = [(d, start) for d, s in enumerate(streams) for start in range(0, len(s) - 1, window - 1)]
    # longest windows first, so each batch pads little
    jobs.sort(key=lambda j: -min(window, len(streams[j[0]]) - j[1]))
    with torch.inference_mode():
        device = next(model.parameters()).device
        for b in range(0, len(jobs), batch_size):
            batch = jobs[b : b + batch_size]
            chunks = [torch.as_tensor(np.asarray(streams[d][s : s + window], dtype=np.int64)) for d, s in batch]
            lengths = [len(c) for c in chunks]
            x = torch.nn.utils.rnn.pad_sequence(chunks, batch_first=True, padding_value=pad_id).to(device)  # (B, T)
            logits = model(input_ids=x).logits  # (B, T, V), the model's dtype
            for row, ((d, s), n) in enumerate(zip(batch, lengths)):
                # one row in float32 at a time: a 150k vocabulary at B x T would not fit
                z = logits[row, : n - 1].float()  # (n-1, V)
                target = x[row, 1:n]  # (n-1,)
                picked = z.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)  # (n-1,)
                out[d][s : s + n - 1] = picked.cpu().numpy()
            if progress is not None:
                progress.update(len(batch))
    return out


def scores_from_logprobs(logprobs: Sequence[np.ndarray], n_bytes: np.ndarray) -> DocScores:
    return DocScores(
        nll=np.array([-float(lp.sum(dtype=np.float64)) for lp in logprobs], dtype=np.float64),
        tokens=np.array([len(lp) for lp in logprobs], dtype=np.int64),
        bytes=np.asarray(n_bytes, dtype=np.int64),
    )


def mixture_logprobs(per_expert: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """log sum_k w_k p_k(token) for one document's aligned per-token log-probs (same tokenizer)."""
    stacked = np.stack([lp.astype(np.float64) for lp in per_expert])  # (K, T)
    logw = np.log(np.asarray(weights, dtype=np.float64))[:, None]  # (K, 1)
    z = stacked + logw
    top = z.max(axis=0)
    return (top + np.log(np.exp(z - top).sum(axis=0))).astype(np.float32)  # (T,)


# ---------------------------------------------------------------------------- bootstrap
def resample_counts(n_docs: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(R, N) how often each document is drawn in each bootstrap resample."""
    return rng.multinomial(n_docs, np.full(n_docs, 1.0 / n_docs), size=resamples).astype(np.float64)


@dataclass(frozen=True)
class Difference:
    """A system against the baseline on one domain (or the macro average), with percentile intervals."""

    diff: float  # bits per byte, system - baseline
    diff_ci: tuple[float, float]
    ratio: float  # bits per byte, system / baseline
    ratio_ci: tuple[float, float]

    def to_json(self) -> dict[str, Any]:
        return {"diff": self.diff, "diff_ci": list(self.diff_ci), "ratio": self.ratio, "ratio_ci": list(self.ratio_ci)}


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2])
    return float(lo), float(hi)


def boot_bpb(scores: DocScores, counts: np.ndarray) -> np.ndarray:
    """(R,) bits per byte of each bootstrap resample."""
    return (counts @ scores.nll) / LN2 / np.maximum(counts @ scores.bytes, 1)


def paired_difference(
    system: Sequence[DocScores], baseline: Sequence[DocScores], counts: Sequence[np.ndarray], confidence: float
) -> Difference:
    """System vs baseline over one domain (one entry) or the macro average of several (domains resampled independently)."""
    point_s = float(np.mean([s.bits_per_byte for s in system]))
    point_b = float(np.mean([b.bits_per_byte for b in baseline]))
    boot_s = np.mean([boot_bpb(s, c) for s, c in zip(system, counts)], axis=0)  # (R,)
    boot_b = np.mean([boot_bpb(b, c) for b, c in zip(baseline, counts)], axis=0)  # (R,)
    return Difference(
        diff=point_s - point_b,
        diff_ci=_interval(boot_s - boot_b, confidence),
        ratio=point_s / point_b,
        ratio_ci=_interval(boot_s / boot_b, confidence),
    )
