"""The expert sanity check: validation perplexity of every model on every domain.

An expert is only worth routing to if, on its own domain, it beats both the
seed it was branched from and the generalist trained with the same compute
(compared in bits per byte). Each failure is reported by name.

Evaluation covers the first validation documents of each domain up to
``eval_tokens_per_domain`` (counted with the workspace tokenizer); every model
sees the same documents through its own tokenizer. Windows overlap by one token
so that every token is predicted exactly once; bits per byte (total negative
log-likelihood over UTF-8 bytes) stays comparable across tokenizers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from moe_experts.data.build import iter_documents
from moe_experts.config import ModelSource
from moe_experts.modeling.stages import (
    GENERALIST,
    GENERALIST_PARAMS,
    SEED,
    Setup,
    expert_weights_id,
    load_expert,
    trained_models,
)
from moe_experts.modeling.train import device_kind
from moe_experts.progress import Progress
from moe_experts.workspace import atomic_dir, read_json, write_json_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainScore:
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int


@dataclass(frozen=True)
class SanityReport:
    models: tuple[str, ...]
    domains: tuple[str, ...]
    scores: dict[str, dict[str, DomainScore]]  # model -> domain -> score
    failures: tuple[str, ...]
    weights: dict[str, str]  # model -> weights id, what the report was computed from
    seconds: float
    reused: bool = False  # loaded from an earlier run on the same weights

    def table(self, metric: str = "perplexity") -> str:
        """A plain-text matrix: rows are models, columns domains; ``*`` marks each column's best."""
        best = {d: min(self.models, key=lambda m: getattr(self.scores[m][d], metric)) for d in self.domains}
        width = max(len(m) for m in self.models) + 2
        lines = [f"validation {metric} (lower is better; * = best per domain)"]
        lines.append("model".ljust(width) + "".join(d.rjust(12) for d in self.domains))
        for m in self.models:
            cells = []
            for d in self.domains:
                value = getattr(self.scores[m][d], metric)
                cells.append((f"{value:.3f}" + ("*" if best[d] == m else " ")).rjust(12))
            lines.append(m.ljust(width) + "".join(cells))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "domains": list(self.domains),
            "scores": {m: {d: asdict(s) for d, s in row.items()} for m, row in self.scores.items()},
            "failures": list(self.failures),
            "weights": self.weights,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SanityReport:
        return cls(
            models=tuple(data["models"]),
            domains=tuple(data["domains"]),
            scores={m: {d: DomainScore(**s) for d, s in row.items()} for m, row in data["scores"].items()},
            failures=tuple(data["failures"]),
            weights=data["weights"],
            seconds=data["seconds"],
        )


def eval_documents(setup: Setup, domain: str, tokenizer: Any) -> list[str]:
    """The first validation documents of a domain, up to the preset's token budget."""
    budget = setup.preset.eval_tokens_per_domain
    texts: list[str] = []
    for doc in iter_documents(setup.workspace, domain, "val"):
        if budget <= 0:
            break
        texts.append(doc.text)
        budget -= len(tokenizer(doc.text, add_special_tokens=False, verbose=False)["input_ids"]) + 1
    return texts


def score_texts(model: Any, tokenizer: Any, texts: Sequence[str], *, window: int, batch_size: int) -> DomainScore:
    """Perplexity and bits per byte of a causal LM over documents joined by end-of-text."""
    import torch

    eos = tokenizer.eos_token_id
    ids: list[int] = [eos]  # predicting the first document's first token needs a context
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        ids.append(eos)
    stream = torch.tensor(ids, dtype=torch.long)  # (N,)
    # Windows of `window` tokens starting every window-1 tokens: each token after
    # the first is a prediction target exactly once.
    starts = list(range(0, len(stream) - 1, window - 1))
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(starts), batch_size):
            chunk = [stream[s : s + window] for s in starts[b : b + batch_size]]
            lengths = torch.tensor([len(c) for c in chunk])
            x = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True, padding_value=eos).to(device)  # (B, T)
            logits = model(input_ids=x).logits.float()  # (B, T, V)
            logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V)
            target = x[:, 1:]  # (B, T-1)
            tok_nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
            mask = torch.arange(x.shape[1] - 1, device=device)[None, :] < (lengths.to(device)[:, None] - 1)
            nll += float(tok_nll[mask].sum())
            count += int(mask.sum())
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return DomainScore(
        perplexity=math.exp(nll / max(count, 1)),
        bits_per_byte=nll / math.log(2) / max(n_bytes, 1),
        tokens=count,
        bytes=n_bytes,
    )


def _pretrained(setup: Setup) -> dict[str, ModelSource]:
    """Cards whose expert is a user's model (local folder or Hugging Face id), by name."""
    return {c.name: c.model for c in setup.registry.cards if c.model.kind == "pretrained"}


def sanity_path(setup: Setup) -> Any:
    return setup.workspace.sanity_dir


def run_sanity(setup: Setup, *, force: bool = False) -> SanityReport:
    """Compute (or reuse, when the same weights were already scored) the perplexity matrix."""
    models = tuple(trained_models(setup) + list(_pretrained(setup)))
    domains = tuple(setup.registry.domains)
    weights = {m: expert_weights_id(setup, m) for m in models}
    cached = sanity_path(setup) / "sanity.json"
    if cached.exists() and not force:
        report = SanityReport.from_json(read_json(cached))
        if report.weights == weights and report.domains == domains:
            logger.info("sanity check: reusing %s (same weights)", cached)
            return replace(report, reused=True)

    started = time.monotonic()
    device = device_kind()
    scores: dict[str, dict[str, DomainScore]] = {}
    docs_cache: dict[str, list[str]] = {}
    with Progress("sanity check", total=len(models) * len(domains), unit="eval") as bar:
        for name in models:
            loaded = load_expert(setup, name, device)
            window = min(setup.preset.seq_len, getattr(loaded.model.config, "max_position_embeddings", setup.preset.seq_len))
            scores[name] = {}
            for domain in domains:
                if domain not in docs_cache:
                    docs_cache[domain] = eval_documents(setup, domain, loaded.tokenizer)
                scores[name][domain] = score_texts(
                    loaded.model, loaded.tokenizer, docs_cache[domain], window=window, batch_size=setup.preset.batch_size
                )
                bar.update()
    report = SanityReport(
        models=models,
        domains=domains,
        scores=scores,
        failures=tuple(find_failures(setup, models, scores)),
        weights=weights,
        seconds=round(time.monotonic() - started, 1),
    )
    with atomic_dir(sanity_path(setup)) as tmp:
        write_json_atomic(tmp / "sanity.json", report.to_json())
        (tmp / "sanity.md").write_text(
            "# Expert sanity check\n\n```\n" + report.table() + "\n\n" + report.table("bits_per_byte") + "\n```\n"
            + "".join(f"\n- FAILED: {f}" for f in report.failures) + "\n",
            encoding="utf-8",
        )
    return report


def find_failures(setup: Setup, models: Sequence[str], scores: dict[str, dict[str, DomainScore]]) -> list[str]:
    """Every expert that does not beat the seed and each generalist on its own domain."""
    failures = []
    baselines = [m for m in (SEED, GENERALIST, GENERALIST_PARAMS) if m in models]
    for card in setup.registry.cards:
        if card.name not in models:
            continue
        own = scores[card.name][card.domain]
        for base in baselines:
            theirs = scores[base][card.domain]
            # bits per byte, not perplexity: a pretrained expert may use another tokenizer
            if own.bits_per_byte >= theirs.bits_per_byte:
                failures.append(
                    f"expert '{card.name}' does not beat {base} on its own domain '{card.domain}': "
                    f"{own.bits_per_byte:.4f} vs {theirs.bits_per_byte:.4f} bits per byte "
                    f"(perplexity {own.perplexity:.2f} vs {theirs.perplexity:.2f})"
                )
    return failures
