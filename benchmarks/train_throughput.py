"""Training throughput of every phase, before and after the fast path, against a plain-loop anchor.

For the preset's shape this trains, through the project's own code
(``moe_experts.modeling.train.train_causal_lm``, the Trainer with the resolved
``speed`` settings), each phase for ``--steps`` optimiser steps on random
tokens:

- seed: a fresh Llama on a mixture of four streams;
- branch: the same model on one stream (its trunk frozen when the preset says so);
- generalist: the seed's shape and data again (a phase of its own in the pipeline);
- moe: four fresh Llamas merged into a Mixtral (top-2), every weight trained,
  as ``train-router --kind token`` does.

Each phase runs with the settings of ``--settings``: ``before`` (the code
before the fast path: fp32 on CPU, bf16 on GPU, eager execution, SDPA
attention, unfused AdamW) and ``after`` (the preset's ``speed``, ``auto`` by
default). The anchor is a plain PyTorch loop on the same shapes (no Trainer:
model, fused AdamW, autocast, ``torch.compile``), run in the same process,
what the hardware gives this shape.

Reported per row: steady tokens/s (after ``--warmup`` steps, which absorb
compilation), the wall time of the whole run (compilation included), model
TFLOP/s and MFU. Model FLOPs per token are 3x the forward FLOPs of
``moe_experts.modeling.flops.model_size`` (6N plus attention over the full
context; only the routed experts count in the MoE). The peak is the GPU's
dense bf16 datasheet number; on a CPU, which has none, the GEMM throughput
measured here at the row's precision.

    python benchmarks/train_throughput.py --preset tiny --steps 60
    python benchmarks/train_throughput.py --preset small --steps 100 --phases seed,moe   # GPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import BF16_PEAK, cpu_model, measured_gemm_flops, usable_cores, write_result  # noqa: E402
from moe_experts.config import PhaseConfig, Preset, SpeedConfig, load_preset  # noqa: E402

PHASES = ("seed", "branch", "generalist", "moe")


def before_config(cuda: bool) -> SpeedConfig:
    """What training did before the fast path: the Trainer's defaults, bf16 only on a GPU."""
    return SpeedConfig(compile="off", precision="bf16" if cuda else "fp32", attention="sdpa", fused_adamw=False,
                       micro_batch_size="auto", dataloader_workers=0)


def streams(vocab: int, n: int, tokens: int, seed: int) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, tokens, dtype=np.int64).astype(np.uint16 if vocab < 65536 else np.int32)
            for _ in range(n)]


class _Vocabulary:
    """What ``new_model`` reads from a tokenizer: its size and special ids."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def fresh_llama(preset: Preset, seed: int) -> Any:
    from moe_experts.modeling.checkpoints import new_model

    return new_model(preset, _Vocabulary(preset.vocab_size), seed=seed)


def fresh_moe(preset: Preset, experts: int = 4, top_k: int = 2) -> Any:
    from moe_experts.routing.token_moe import MergeSpec, init_gates, merge_experts

    models = [fresh_llama(preset, seed=i) for i in range(experts)]
    moe = merge_experts(models, models, MergeSpec(experts=tuple(f"e{i}" for i in range(experts)), top_k=top_k))
    init_gates(moe, [], mode="random", seed=0)
    moe.config.output_router_logits = True
    return moe


def model_for(phase: str, preset: Preset) -> Any:
    if phase == "moe":
        return fresh_moe(preset)
    model = fresh_llama(preset, seed=0)
    if phase == "branch" and preset.branch_trunk == "frozen":
        from moe_experts.modeling.stages import freeze_trunk

        freeze_trunk(model)
    return model


class StepClock:
    """Wall-clock time at the end of every optimiser step (a device sync first, so queued work is counted)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.times = cuda, []

    def tick(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def steady(self, warmup: int, tokens_per_step: int) -> tuple[float, float]:
        """(tokens/s over the steps after ``warmup``, median seconds per step)."""
        t = self.times[warmup:]
        gaps = [b - a for a, b in zip(t, t[1:])]
        return tokens_per_step * len(gaps) / (t[-1] - t[0]), statistics.median(gaps)


def pipeline_steps(phase: str, preset: Preset) -> int | None:
    """How long the phase is in the pipeline (``compile: auto`` decides on it); None where it is not fixed."""
    seed, branch = preset.seed_phase.steps, preset.branch_phase.steps
    if phase == "moe":
        from moe_experts.recipes import load_token_recipe

        recipe = Path(__file__).resolve().parents[1] / "router_training" / "token.yaml"
        return load_token_recipe(recipe if recipe.is_file() else None).training.steps
    if seed is None or branch is None:
        return None
    return {"seed": seed, "branch": branch, "generalist": seed + 4 * branch}[phase]


def trainer_run(phase: str, preset: Preset, config: SpeedConfig, steps: int, cuda: bool) -> dict[str, Any]:
    """One phase through train_causal_lm, with the settings the pipeline's phase would get; clocked per step."""
    from transformers import TrainerCallback

    from moe_experts.modeling.train import BlockDataset, device_kind, resolve_run_speed, train_causal_lm

    model = model_for(phase, preset)
    run_preset = preset.model_copy(update={"speed": config, "save_steps": steps + 1, "logging_steps": 25})
    speed = resolve_run_speed(model, run_preset, device_kind(), pipeline_steps(phase, preset))  # as the pipeline would
    n = 1 if phase == "branch" else 4
    data = BlockDataset(streams(preset.vocab_size, n, 200_000, seed=1), preset.seq_len,
                        steps * preset.batch_size * preset.gradient_accumulation_steps, seed=2)
    clock = StepClock(cuda)

    class Tick(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.tick()

    phase_config = PhaseConfig(steps=steps, learning_rate=1e-3, warmup_steps=min(10, steps - 1), schedule="constant")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result, _ = train_causal_lm(model, data, phase=phase_config, preset=run_preset, ckpt_dir=Path(tmp) / "ckpt",
                                    resume_from=None, seed=0, what=phase, callbacks=[Tick()], speed=speed)
        wall = time.perf_counter() - started
    return {"model": model, "clock": clock, "wall": wall, "speed": result.speed, "loss": result.last_loss}


def anchor_run(phase: str, preset: Preset, precision: str, compiled: bool, steps: int, cuda: bool) -> dict[str, Any]:
    """The plain loop: the same shape and batch, fused AdamW, autocast, optional torch.compile; no Trainer."""
    import torch

    device = "cuda" if cuda else "cpu"
    model = model_for(phase, preset).to(device)
    model.set_attn_implementation("sdpa" if cuda else "eager")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step = torch.compile(model) if compiled else model
    batch = preset.batch_size * preset.gradient_accumulation_steps
    data = torch.randint(0, preset.vocab_size, (steps, batch, preset.seq_len), device=device)
    clock = StepClock(cuda)
    started = time.perf_counter()
    for i in range(steps):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = step(input_ids=data[i], labels=data[i]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock.tick()
    return {"model": model, "clock": clock, "wall": time.perf_counter() - started, "loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps per run")
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the steady rate (compilation happens there)")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--settings", default="before,after")
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.warmup + 2 > args.steps:
        sys.exit("error: --steps must exceed --warmup by at least 2")
    logging.basicConfig(level=logging.WARNING)

    import torch

    from moe_experts.modeling.flops import model_size

    preset = load_preset(args.preset)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else cpu_model()
    tokens_per_step = preset.tokens_per_step
    peaks: dict[str, tuple[float | None, str]] = {}

    def peak(precision: str) -> tuple[float | None, str]:
        if precision not in peaks:
            if cuda:
                peaks[precision] = (next((v for k, v in BF16_PEAK.items() if k in device), None), "bf16 datasheet (dense)")
            else:
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                peaks[precision] = (measured_gemm_flops(torch, dtype=dtype), f"{precision} GEMM measured here")
        return peaks[precision]

    rows = []
    after = preset.speed
    for phase in args.phases.split(","):
        if phase not in PHASES:
            sys.exit(f"error: unknown phase {phase!r}; use some of {', '.join(PHASES)}")
        runs: list[tuple[str, Any]] = []
        for setting in args.settings.split(","):
            config = {"before": before_config(cuda), "after": after}.get(setting)
            if config is None:
                sys.exit(f"error: unknown setting {setting!r}; use before and/or after")
            runs.append((setting, lambda c=config: trainer_run(phase, preset, c, args.steps, cuda)))
        if not args.no_anchor:
            from moe_experts.modeling.speed import native_bf16

            precision = "bf16" if native_bf16("cuda" if cuda else "cpu") else "fp32"
            runs.append(("anchor", lambda p=precision: anchor_run(phase, preset, p, True, args.steps, cuda)))
        for setting, run in runs:
            torch._dynamo.reset()
            out = run()
            tps, step_s = out["clock"].steady(args.warmup, tokens_per_step)
            size = model_size(out["model"].config, preset.seq_len)
            flops_per_token = 3 * size.flops_per_token
            precision = out["speed"]["precision"] if "speed" in out else precision
            peak_flops, peak_kind = peak(precision)
            row = {
                "phase": phase, "settings": setting, "speed": out.get("speed"),
                "precision": precision, "steps": args.steps, "tokens_per_step": tokens_per_step,
                "tokens_per_second": round(tps, 1), "median_step_seconds": round(step_s, 5),
                "wall_seconds": round(out["wall"], 2),
                "model_tflops": round(flops_per_token * tps / 1e12, 4),
                "mfu": round(flops_per_token * tps / peak_flops, 4) if peak_flops else None,
                "peak_flops": peak_flops, "peak_kind": peak_kind, "final_loss": out["loss"],
            }
            rows.append(row)
            print(f"{phase:<11} {setting:<7} {row['tokens_per_second']:>12,.0f} tok/s  "
                  f"step {step_s * 1e3:7.1f} ms  wall {out['wall']:6.1f} s  MFU {row['mfu']}", flush=True)
            del out
    result = {
        "benchmark": "train_throughput",
        "date": dt.date.today().isoformat(),
        "machine": {"device": device, "cores": usable_cores(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "preset": preset.name,
        "warmup_steps": args.warmup,
        "rows": rows,
    }
    stem = f"train_throughput-{result['date']}-{preset.name}-{'gpu' if cuda else 'cpu'}"
    write_result(result, args.out, stem, shown={"rows": [{k: r[k] for k in ("phase", "settings", "tokens_per_second", "mfu")} for r in rows]})


if __name__ == "__main__":
    main()
