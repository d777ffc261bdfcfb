"""Causal-LM training on token streams, through the transformers Trainer.

The Trainer is the engine: multi-GPU when launched with ``torchrun`` /
``accelerate launch``, resumable checkpoints every ``save_steps`` (restored
with ``weights_only=True`` loads), seeded data order. How fast it runs (bf16
autocast, ``torch.compile`` with an eager fallback, the attention kernel, fused
AdamW, micro-batches with accumulation, loader workers) is the preset's
``speed`` section, resolved per device in ``speed.py``; no step reads a value
back from the device except at logging and validation steps.
This module adds what the project needs around it: a dataset of fixed-length
blocks sampled from one or more domain streams, refusing to silently discard
or silently reuse an interrupted run, and compact progress lines when the
output is not a terminal.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moe_experts.config import PhaseConfig, Preset
from moe_experts.errors import TrainingError
from moe_experts.modeling import speed as speed_mod
from moe_experts.progress import bars_enabled
from moe_experts.workspace import read_json, write_json_atomic

logger = logging.getLogger(__name__)


class BlockDataset:
    """``length`` blocks of ``seq_len`` tokens cut at seeded random offsets from token streams.

    Item ``i`` comes from stream ``i % len(streams)``: a uniform mixture over
    domains, so every optimiser step sees the domains in the same proportion. Offsets are drawn once from ``seed``: the dataset, and
    so the run, is reproducible.
    """

    def __init__(self, streams: Sequence[np.ndarray], seq_len: int, length: int, seed: int) -> None:
        for i, s in enumerate(streams):
            if len(s) <= seq_len:
                raise TrainingError(
                    f"token stream {i} has {len(s)} tokens, fewer than one block of {seq_len}",
                    hint="add documents to that domain's corpus or use a preset with a shorter seq_len",
                )
        self.streams = list(streams)
        self.seq_len = seq_len
        rng = np.random.default_rng(seed)
        self.which = np.arange(length) % len(streams)  # (length,)
        highs = np.array([len(s) - seq_len for s in streams])
        self.offsets = (rng.random(length) * highs[self.which]).astype(np.int64)  # (length,)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        stream = self.streams[self.which[i]]
        start = int(self.offsets[i])
        block = torch.from_numpy(np.asarray(stream[start : start + self.seq_len], dtype=np.int64))  # (T,)
        return {"input_ids": block, "labels": block}


@dataclass(frozen=True)
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    first_loss: float | None
    last_loss: float | None
    resumed_from_step: int | None
    device: str
    speed: dict[str, Any] | None = None  # the resolved speed settings (speed.Speed.to_json())


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    ckpts = [p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None


RUN_RECORD = "run.json"  # in a checkpoint folder: what the interrupted run was started from


def prepare_checkpoint_dir(
    ckpt_dir: Path, *, what: str, resume: bool, restart: bool, inputs: dict[str, Any] | None = None
) -> Path | None:
    """The checkpoint to resume from, or None; refuse to guess what to do with an interrupted run.

    ``inputs`` (what the run is built from: data, parents, recipe) is recorded
    when a run starts, and a resume from a run started from other inputs is
    refused: its optimiser state and weights belong to another experiment.
    """
    if resume and restart:
        raise TrainingError("`resume` and `restart` contradict each other", hint="ask for one of them")
    latest = latest_checkpoint(ckpt_dir) if ckpt_dir.exists() else None
    if latest is None:
        if resume:
            logger.info("%s: nothing to resume in %s, starting from scratch", what, ckpt_dir)
        _record_run(ckpt_dir, inputs)
        return None
    if restart:
        logger.info("%s: discarding the interrupted run in %s", what, ckpt_dir)
        shutil.rmtree(ckpt_dir)
        _record_run(ckpt_dir, inputs)
        return None
    if not resume:
        raise TrainingError(
            f"{what}: an interrupted run left checkpoints in {ckpt_dir} (latest: {latest.name})",
            hint="set `resume` to continue it, or `restart` to discard it and start over",
        )
    if inputs is not None:
        record = ckpt_dir / RUN_RECORD
        if not record.exists():
            logger.warning("%s: %s records no inputs (an older version wrote it); resuming as asked", what, ckpt_dir)
        else:
            started = _flat(read_json(record))
            now = _flat(json.loads(json.dumps(inputs, default=str)))  # as it would be recorded
            diffs = [f"{key}: started from {started.get(key)!r}, now {now.get(key)!r}"
                     for key in sorted(set(started) | set(now)) if started.get(key) != now.get(key)]
            if diffs:
                raise TrainingError(
                    f"{what}: the interrupted run in {ckpt_dir} was started from other inputs:\n  " + "\n  ".join(diffs),
                    hint="set `restart` to discard it and train from these inputs, "
                    "or restore the recipe / data it was started from and set `resume`",
                )
    logger.info("%s: resuming from %s", what, latest.name)
    return latest


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"recipe": {"top_k": 2}} -> {"recipe.top_k": 2}: a difference is named down to its field."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _record_run(ckpt_dir: Path, inputs: dict[str, Any] | None) -> None:
    if inputs is not None:
        write_json_atomic(ckpt_dir / RUN_RECORD, inputs)


def device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resumable(trainer_class: Any, autocast: str | None = None, lr_scales: Mapping[str, float] | None = None,
               extra_loss: Callable[[Any], Any] | None = None) -> Any:
    """The Trainer, with checkpoints that a resume restores whole, and without two per-step costs.

    ``lr_scales``: parameter-name suffix -> multiplier of the learning rate for
    the parameters whose names end with it (their own optimiser groups; the
    schedule scales every group alike). ``extra_loss``: a term computed from each
    micro-batch's model outputs (a mean over that micro-batch) and added to its
    loss, divided by the micro-batches a step accumulates as the Trainer does
    for a per-batch mean.

    ``autocast``: the device type to run forward passes under bf16 autocast on,
    or None for fp32. The Trainer's own ``bf16=True`` does it through accelerate,
    which also casts every output of the forward pass back to fp32: the whole
    ``(batch, seq, vocab)`` logits tensor, a copy and its backward each step that
    a causal LM with labels never reads (the loss is computed inside the model,
    in fp32). Here the autocast is the Trainer's own hook, and outputs stay as
    the model returns them. ``floating_point_ops`` (which walks every module to
    count parameters on every micro-batch) is computed from a parameter count taken once.

    transformers#48805 (open in 5.23): the Trainer writes checkpoints through
    ``save_pretrained``, which converts an MoE's fused experts to the Hub's
    per-expert layout, but resumes them with a plain ``load_state_dict`` in the
    fused layout; the mismatch is only logged, and a resumed MoE would silently
    go on from its initial experts and gates. Checkpoints here exist only to be
    resumed, so they are written in the model's own layout; and a resume that
    leaves any weight unrestored (other than one tied to a restored weight) is
    an error instead of a log line.
    """
    import functools
    import inspect

    class ResumableTrainer(trainer_class):  # type: ignore[misc,valid-type]
        _counted: int | None = None  # parameters outside the embeddings, counted once

        def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> Any:
            import contextlib

            import torch

            if autocast is None:
                return contextlib.nullcontext()
            return torch.autocast(autocast, dtype=torch.bfloat16, cache_enabled=cache_enabled)

        def create_optimizer(self, model: Any = None) -> Any:
            optimizer = super().create_optimizer(model)
            if not lr_scales:
                return optimizer
            names = {id(p): n for n, p in (self.model if model is None else model).named_parameters()}
            groups, optimizer.param_groups = optimizer.param_groups, []  # regrouped before the schedule reads them
            for group in groups:
                by_scale: dict[float, list[Any]] = {}
                for param in group["params"]:
                    name = names[id(param)]
                    by_scale.setdefault(next((v for k, v in lr_scales.items() if name.endswith(k)), 1.0), []).append(param)
                for scale, params in by_scale.items():
                    optimizer.add_param_group({**group, "params": params, "lr": group["lr"] * scale})
            return optimizer

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if extra_loss is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            loss = loss + extra_loss(outputs) / self.current_gradient_accumulation_steps
            return (loss, outputs) if return_outputs else loss

        def floating_point_ops(self, inputs: dict[str, Any]) -> int:
            ids = inputs.get(getattr(self.model, "main_input_name", "input_ids"))
            if ids is None or not hasattr(self.model, "num_parameters"):
                return 0
            if self._counted is None:
                self._counted = self.model.num_parameters(exclude_embeddings=True)
            return 6 * ids.numel() * self._counted

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            if "save_original_format" not in inspect.signature(type(model).save_pretrained).parameters:
                return super()._save(output_dir, state_dict)  # transformers 4: one layout only
            model.save_pretrained = functools.partial(type(model).save_pretrained, model, save_original_format=False)
            try:
                super()._save(output_dir, state_dict)
            finally:
                del model.save_pretrained

        def _issue_warnings_after_load(self, load_result: Any) -> None:
            params = dict(self.model.named_parameters(remove_duplicate=False))
            missing = set(load_result.missing_keys)
            restored = {p.data_ptr() for name, p in params.items() if name not in missing}
            lost = sorted(k for k in missing if k not in params or params[k].data_ptr() not in restored)
            if lost or load_result.unexpected_keys:
                raise TrainingError(
                    f"the checkpoint does not match the model: {len(lost)} weight(s) not restored "
                    f"({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''}), "
                    f"{len(load_result.unexpected_keys)} unexpected "
                    f"({', '.join(sorted(load_result.unexpected_keys)[:3])})",
                    hint="the interrupted run was written by another version or model; set `restart` to start over",
                )

    return ResumableTrainer


def resolve_run_speed(model: Any, preset: Preset, device: str, steps: int | None = None) -> speed_mod.Speed:
    """The preset's speed settings for this model on ``device`` and a phase of ``steps`` (probing GPU memory)."""
    fits = None
    if device == "cuda" and preset.speed.micro_batch_size == "auto":
        fits = speed_mod.cuda_fits(model.to("cuda"), preset.seq_len, speed_mod.resolve_precision(preset.speed, device))
    return speed_mod.resolve_speed(preset.speed, device=device, batch_size=preset.batch_size,
                                   accumulation=preset.gradient_accumulation_steps, steps=steps, fits=fits)


def scheduler_arguments(phase: PhaseConfig) -> dict[str, Any]:
    """The Trainer's ``lr_scheduler_type`` and its kwargs for ``phase``'s warmup and decay (steps resolved)."""
    if phase.schedule == "constant":
        return {"lr_scheduler_type": "constant_with_warmup", "lr_scheduler_kwargs": {}}
    if phase.schedule == "cosine":
        return {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": phase.min_lr_ratio}}
    # linear, 1-sqrt: transformers' warmup-stable-decay with no stable part (warmup, then decay to the last step)
    assert phase.steps is not None, "a phase's budget is resolved to steps before it trains"
    return {"lr_scheduler_type": "warmup_stable_decay",
            "lr_scheduler_kwargs": {"num_decay_steps": max(phase.steps - phase.warmup_steps, 1),
                                    "decay_type": phase.schedule, "min_lr_ratio": phase.min_lr_ratio}}


def train_causal_lm(
    model: Any,
    dataset: BlockDataset,
    *,
    phase: PhaseConfig,
    preset: Preset,
    ckpt_dir: Path,
    resume_from: Path | None,
    seed: int,
    what: str,
    callbacks: Sequence[Any] = (),
    speed: speed_mod.Speed | None = None,
    lr_scales: Mapping[str, float] | None = None,
    extra_loss: Callable[[Any], Any] | None = None,
) -> tuple[TrainResult, Any]:
    """Train ``model`` for ``phase.steps`` optimiser steps; returns the result and the Trainer.

    ``speed``: the resolved settings (default: the preset's, for this device). When torch.compile
    fails before the first optimiser step, the run warns once and goes on eager from the same weights.
    ``lr_scales`` (parameter-name suffix -> learning-rate multiplier) and ``extra_loss`` (a term
    from the model outputs, added to each micro-batch's loss): see ``_resumable``.
    """
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    device = device_kind()
    run_speed = speed or resolve_run_speed(model, preset, device, phase.steps)
    logger.info("%s: %s, %s%s attention, micro-batch %d x %d accumulation%s", what, run_speed.precision,
                "compiled, " if run_speed.compile else "", run_speed.attention, run_speed.micro_batch_size,
                run_speed.accumulation, ", fused AdamW" if run_speed.fused_adamw else "")

    def arguments(compiled: bool) -> Any:
        return TrainingArguments(
            output_dir=str(ckpt_dir),
            max_steps=phase.steps,
            per_device_train_batch_size=run_speed.micro_batch_size,
            gradient_accumulation_steps=run_speed.accumulation,
            learning_rate=phase.learning_rate,
            **scheduler_arguments(phase),
            warmup_steps=phase.warmup_steps,
            weight_decay=phase.weight_decay,
            adam_beta1=0.9,
            adam_beta2=0.95,
            max_grad_norm=1.0,
            optim="adamw_torch_fused" if run_speed.fused_adamw else "adamw_torch",
            save_strategy="steps",
            save_steps=preset.save_steps,
            save_total_limit=2,
            logging_steps=preset.logging_steps,
            logging_first_step=True,
            logging_nan_inf_filter=False,  # its isnan() check reads the loss back every step
            seed=seed,
            data_seed=seed,
            bf16=False,  # autocast through _resumable's hook instead (no fp32 copy of the logits)
            torch_compile=compiled,
            torch_compile_backend=speed_mod.COMPILE_BACKEND if compiled else None,
            use_cpu=device == "cpu",
            report_to="none",
            disable_tqdm=not bars_enabled(),
            dataloader_num_workers=run_speed.dataloader_workers,
            dataloader_pin_memory=device == "cuda",
            dataloader_persistent_workers=run_speed.dataloader_workers > 0,
            remove_unused_columns=False,
        )

    class _LogLines(TrainerCallback):
        """One INFO line per logging step when there is no progress bar to watch."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not bars_enabled() and logs and "loss" in logs:
                logger.info("%s: step %d/%d loss %.4f", what, state.global_step, state.max_steps, logs["loss"])

    class _Stepped(TrainerCallback):
        """Whether this attempt took an optimiser step (after one, a compile failure is not retried eager)."""

        stepped = False

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.stepped = True

    attention_before = getattr(model.config, "_attn_implementation", None)
    if attention_before != run_speed.attention:
        model.set_attn_implementation(run_speed.attention)
    started = time.monotonic()
    compiled = run_speed.compile
    if compiled:
        import torch._dynamo

        # a phase is a new model: drop the last phase's compiled frames (their guards would only fail, and count
        # towards dynamo's recompile limit); the compiled kernels stay cached on disk and are reused
        torch._dynamo.reset()
    try:
        while True:
            stepped = _Stepped()
            trainer_class = _resumable(Trainer, device if run_speed.precision == "bf16" else None, lr_scales, extra_loss)
            trainer = trainer_class(model=model, args=arguments(compiled), train_dataset=dataset,
                                    callbacks=[_LogLines(), stepped, *callbacks])
            trainer.remove_callback(PrinterCallback)  # raw dicts on stdout; _LogLines says the same on stderr
            try:
                trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
                break
            except Exception as exc:
                # before the first optimiser step the weights are untouched: the same run, eager
                if not (compiled and not stepped.stepped and speed_mod.is_compile_error(exc)):
                    raise
                speed_mod.mark_compile_broken(speed_mod.compile_failure(exc))
                model.zero_grad(set_to_none=True)
                compiled = False
    finally:
        if attention_before is not None and attention_before != run_speed.attention:
            model.set_attn_implementation(attention_before)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    world = max(trainer.args.world_size, 1)
    used = speed_mod.Speed(**{**run_speed.to_json(), "compile": compiled})
    result = TrainResult(
        steps=trainer.state.global_step,
        tokens=trainer.state.global_step * preset.tokens_per_step * world,
        seconds=round(time.monotonic() - started, 1),
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        resumed_from_step=int(resume_from.name.split("-")[-1]) if resume_from else None,
        device=device,
        speed=used.to_json(),
    )
    return result, trainer
