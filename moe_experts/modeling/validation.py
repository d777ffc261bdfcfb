"""Validation during training: bits per byte on the val split, early stopping, the best weights kept.

Every ``every_steps`` optimiser steps the model scores the first
``tokens_per_domain`` tokens of each of its domains' val streams; the phase's
score is the mean over those domains (one domain for a branch, all of them for
the seed and the generalist). The starting point is scored too, before the
first step, and counts as a candidate: when no step improves on it, the weights
kept are the ones training started from. So a branch can never be saved worse
on its own domain than the seed it was branched from.

The best weights live in memory and are written into each resumable
checkpoint, so an interrupted run that resumes still keeps the best of the
whole run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moe_experts.config import ValidationConfig
from moe_experts.errors import TrainingError

logger = logging.getLogger(__name__)

BEST_WEIGHTS = "best.safetensors"  # inside a checkpoint-N folder
HISTORY = "validation.json"


@dataclass(frozen=True)
class ValidationSet:
    """Per domain: (N, T) blocks of val tokens, and the UTF-8 bytes of every token that is predicted."""

    blocks: dict[str, np.ndarray]
    predicted_bytes: dict[str, int]


def token_byte_lengths(tokenizer: Any) -> np.ndarray:
    """Bytes each token id stands for: a byte-level BPE token's string has one character per byte."""
    special = set(tokenizer.all_special_ids)
    lengths = np.zeros(len(tokenizer), dtype=np.int64)
    for token, i in tokenizer.get_vocab().items():
        if i < len(lengths) and i not in special:
            lengths[i] = len(token)
    return lengths


def validation_set(streams: Mapping[str, np.ndarray], tokenizer: Any, *, seq_len: int, tokens_per_domain: int) -> ValidationSet:
    """The first ``tokens_per_domain`` tokens of each val stream, cut into blocks of ``seq_len``."""
    lengths = token_byte_lengths(tokenizer)
    blocks, predicted = {}, {}
    for domain, stream in streams.items():
        if len(stream) < seq_len:
            raise TrainingError(
                f"domain '{domain}': its val split has {len(stream)} tokens, fewer than one validation block of {seq_len}",
                hint="add documents to the domain's corpus, or turn validation off in the preset (validation.every_steps: null)",
            )
        n = max(1, min(tokens_per_domain, len(stream)) // seq_len)
        ids = np.asarray(stream[: n * seq_len], dtype=np.int64).reshape(n, seq_len)  # (N, T)
        blocks[domain] = ids
        predicted[domain] = int(lengths[ids[:, 1:]].sum())  # the first token of a block is context only
    return ValidationSet(blocks=blocks, predicted_bytes=predicted)


def bits_per_byte(model: Any, val: ValidationSet, *, batch_size: int, bf16: bool | None = None) -> dict[str, float]:
    """Each domain's bits per byte on its validation blocks (model left in the mode it was in).

    ``bf16``: under bf16 autocast, as the run trains (default: on a GPU only); losses add up in float64.
    """
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, float] = {}
    try:
        autocast = device.type == "cuda" if bf16 is None else bf16
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            for domain, blocks in val.blocks.items():
                nll = torch.zeros((), dtype=torch.float64, device=device)
                for b in range(0, len(blocks), batch_size):
                    x = torch.from_numpy(blocks[b : b + batch_size]).to(device)  # (B, T)
                    logits = model(input_ids=x).logits.float()  # (B, T, V)
                    nll += torch.nn.functional.cross_entropy(
                        logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
                    ).double()
                out[domain] = float(nll) / math.log(2) / max(val.predicted_bytes[domain], 1)  # one sync a domain
    finally:
        model.train(was_training)
    return out


@dataclass
class ValidationState:
    """What validation has seen so far in one run: the history, the best score and where it was."""

    start: float | None = None
    best: float | None = None
    best_step: int = 0
    bad: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)
    stopped_early: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "best": self.best, "best_step": self.best_step, "bad": self.bad,
                "history": [list(h) for h in self.history], "stopped_early": self.stopped_early}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ValidationState:
        return cls(start=data["start"], best=data["best"], best_step=data["best_step"], bad=data["bad"],
                   history=[(int(s), float(v)) for s, v in data["history"]], stopped_early=data["stopped_early"])


def validation_callback(model: Any, val: ValidationSet, config: ValidationConfig, *, what: str, batch_size: int,
                        resume_from: Path | None, bf16: bool | None = None) -> Any:
    """A TrainerCallback that validates, stops early, and keeps the best weights (``.best_state()``).

    ``bf16``: score under bf16 autocast, as the run trains (default: on a GPU only).
    """
    from transformers import TrainerCallback

    class Validation(TrainerCallback):
        def __init__(self) -> None:
            self.state = ValidationState()
            self._best: dict[str, Any] | None = None  # the best weights on CPU; None while the current ones are best
            if resume_from is not None and (resume_from / HISTORY).exists():
                self.state = ValidationState.from_json(json.loads((resume_from / HISTORY).read_text()))
                if (resume_from / BEST_WEIGHTS).exists():
                    from safetensors.torch import load_file

                    self._best = load_file(str(resume_from / BEST_WEIGHTS))

        def _validate(self, step: int) -> bool:
            scores = bits_per_byte(model, val, batch_size=batch_size, bf16=bf16)
            score = sum(scores.values()) / len(scores)
            self.state.history.append((step, score))
            if self.state.start is None:
                self.state.start = score
            improved = self.state.best is None or score < self.state.best - config.min_delta
            if improved:
                self.state.best, self.state.best_step, self.state.bad = score, step, 0
                self._best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                self.state.bad += 1
            logger.info("%s: step %d validation %.4f bits per byte%s (best %.4f at step %d)", what, step, score,
                        " *" if improved else "", self.state.best, self.state.best_step)
            return config.patience is not None and self.state.bad >= config.patience

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not self.state.history:  # the starting point, unless a resumed run already scored it
                self._validate(state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = state.global_step
            if step % config.every_steps == 0 or step >= state.max_steps:  # type: ignore[operator]
                if self._validate(step):
                    self.state.stopped_early = True
                    control.should_training_stop = True
                    logger.info("%s: no improvement in %d validations, stopping at step %d", what, self.state.bad, step)

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            from safetensors.torch import save_file

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / HISTORY).write_text(json.dumps(self.state.to_json()))
                if self._best is not None:
                    save_file({k: v.contiguous() for k, v in self._best.items()}, str(folder / BEST_WEIGHTS))

        def restore_best(self, final_step: int) -> None:
            """Load the best weights into the model, unless the final ones are the best."""
            if self.state.best_step != final_step and self._best is not None:
                model.load_state_dict(self._best)
                logger.info("%s: keeping the weights of step %d (%.4f bits per byte)", what,
                            self.state.best_step, self.state.best)

    return Validation()
