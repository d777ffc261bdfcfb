"""How a training phase runs fast on the device at hand, without changing what it computes.

A preset's ``speed`` section (``SpeedConfig``) says what to use; ``auto``
resolves here to what measured fastest (``benchmarks/train_throughput.py``,
``benchmarks/RESULTS.md``):

- precision: bf16 autocast over fp32 master weights on a GPU with bf16, and on
  CPUs with native bf16 matrix units (AMX or AVX512-BF16); fp32 elsewhere,
  where bf16 would be emulated and slower;
- ``torch.compile`` of the training step for phases long enough to repay the
  compilation (``compile_min_steps``: 500 steps on a GPU, 1,500 on a CPU,
  where a cold compile costs roughly 40 s on 2 cores), with one warning and eager
  training when it cannot compile (no C++ compiler, an unsupported Python, a backend
  error): the run goes on, only slower;
- the attention kernel: SDPA on GPU (flash / memory-efficient kernels); the
  plain ``eager`` one on CPU, where SDPA was slower at these sizes;
- the micro-batch: the whole per-device batch in one forward pass, halved on a
  GPU until a step fits in memory, with gradient accumulation making up the
  preset's batch so results stay comparable;
- fused AdamW, and worker processes cutting blocks on GPU.

Nothing here changes the budget, the global batch, the schedule or the data
order; the manifest of every trained model records the resolved settings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from moe_experts.config import SpeedConfig
from moe_experts.errors import ConfigError
from moe_experts.machine import COMPILE_ENV

logger = logging.getLogger(__name__)

COMPILE_BACKEND = "inductor"  # tests swap in a backend that fails
_OFF = {"0", "off", "false", "no"}

# compile_min_steps: auto. On 2 CPU cores a cold compile of tiny's training step cost 37-46 s and saved 45 ms a step
# (break-even near 1,000 steps); on a GPU compiling made the small seed's step 2.4x faster (issue 16's table).
COMPILE_MIN_STEPS = {"cuda": 500, "cpu": 1500}

_compile_broken: str | None = None  # why torch.compile failed in this process: later phases go eager without retrying


@dataclass(frozen=True)
class Speed:
    """The resolved settings of one training run (recorded in its manifest)."""

    device: str
    precision: str  # "bf16" (autocast over fp32 weights) or "fp32"
    compile: bool
    attention: str  # "sdpa" or "eager"
    micro_batch_size: int  # sequences per forward pass, per device
    accumulation: int  # micro-batches per optimiser step: micro_batch_size x accumulation = the preset's batch
    fused_adamw: bool
    dataloader_workers: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def native_bf16(device: str) -> bool:
    """Whether bf16 matrix multiplies run natively (not emulated) on ``device``."""
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and check() for check in checks)


def compile_refused() -> str | None:
    """Why compiling is off before trying (the environment asks, or it failed earlier in this process)."""
    if os.environ.get(COMPILE_ENV, "").strip().lower() in _OFF:
        return f"{COMPILE_ENV}={os.environ[COMPILE_ENV]}"
    return _compile_broken


def compile_supported() -> str | None:
    """None when torch.compile can be tried here, else why not."""
    import torch

    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile is not supported on this Python / platform"
    except Exception as exc:  # noqa: BLE001 - an import failure is one more reason not to compile
        return f"torch.compile is unavailable ({type(exc).__name__}: {exc})"
    return None if hasattr(torch, "compile") else "this torch has no torch.compile"


def is_compile_error(exc: BaseException) -> bool:
    """A failure of torch.compile itself (tracing, a backend, a missing compiler), not of the model."""
    try:
        from torch._dynamo.exc import TorchDynamoException
    except Exception:  # noqa: BLE001
        return False
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # a Trainer may wrap it
        if isinstance(exc, TorchDynamoException):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def compile_failure(exc: BaseException) -> str:
    """What went wrong, in one line: the backend's own error rather than dynamo's wrapper around it."""
    inner = getattr(exc, "inner_exception", None)
    root = inner if isinstance(inner, BaseException) else exc
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    return f"{type(root).__name__}: {lines[0][:300] if lines else '(no message)'}"


def mark_compile_broken(reason: str) -> None:
    """Warn once, and train eager for the rest of this process."""
    global _compile_broken
    if _compile_broken is None:
        logger.warning("torch.compile failed (%s); training eager, which is slower. "
                       "Set `speed: {compile: off}` in the preset, or pass --no-compile, to skip the attempt.", reason)
    _compile_broken = reason


def largest_fitting(batch: int, fits: Callable[[int], bool]) -> int:
    """The largest micro-batch ``batch / 2**k`` for which ``fits`` holds; an error when not even one sequence fits."""
    size = batch
    while True:
        if fits(size):
            return size
        smaller = size // 2
        while smaller >= 1 and batch % smaller:
            smaller -= 1
        if smaller < 1 or smaller == size:
            raise ConfigError(
                f"one training sequence does not fit in device memory (tried micro-batches down to {size})",
                hint="use a preset with a shorter seq_len or a smaller model, or a device with more memory")
        size = smaller


def resolve_precision(config: SpeedConfig, device: str) -> str:
    """``config.precision`` with ``auto`` decided: bf16 where ``device`` multiplies it natively, else fp32."""
    if config.precision != "auto":
        return config.precision
    return "bf16" if native_bf16(device) else "fp32"


def resolve_speed(
    config: SpeedConfig, *, device: str, batch_size: int, accumulation: int, steps: int | None = None,
    fits: Callable[[int], bool] | None = None,
) -> Speed:
    """``config``'s settings, with every ``auto`` decided for ``device``.

    ``batch_size`` x ``accumulation`` is the preset's per-device batch, which stays as it is; ``steps``
    is the phase's length (``compile: auto`` compiles phases of at least ``compile_min_steps``; None:
    long enough); ``fits`` (GPU only) says whether a micro-batch of that many sequences fits in memory.
    """
    per_device = batch_size * accumulation
    precision = resolve_precision(config, device)
    if precision == "bf16" and device == "cuda" and not native_bf16(device):
        raise ConfigError("speed.precision is bf16, but this GPU does not support bf16",
                          hint="set speed.precision to fp32 or auto")
    min_steps = config.compile_min_steps if config.compile_min_steps != "auto" else COMPILE_MIN_STEPS.get(device, COMPILE_MIN_STEPS["cpu"])
    long_enough = config.compile == "on" or steps is None or steps >= min_steps
    compile_ = config.compile != "off" and long_enough and compile_refused() is None  # off, or failed (warned) before
    if compile_:
        why = compile_supported()
        if why is not None:
            mark_compile_broken(why)
            compile_ = False
    attention = config.attention if config.attention != "auto" else ("sdpa" if device == "cuda" else "eager")
    if config.micro_batch_size == "auto":
        micro = largest_fitting(per_device, fits) if (device == "cuda" and fits is not None) else per_device
    else:
        micro = int(config.micro_batch_size)
    if per_device % micro:
        raise ConfigError(f"speed.micro_batch_size {micro} does not divide the per-device batch of {per_device}",
                          hint="pick a divisor of batch_size x gradient_accumulation_steps, or auto")
    workers = config.dataloader_workers if config.dataloader_workers != "auto" else (2 if device == "cuda" else 0)
    return Speed(device=device, precision=precision, compile=compile_, attention=attention, micro_batch_size=micro,
                 accumulation=per_device // micro, fused_adamw=config.fused_adamw, dataloader_workers=int(workers))


def cuda_fits(model: Any, seq_len: int, precision: str) -> Callable[[int], bool]:
    """A probe for ``largest_fitting``: one forward and backward pass of random tokens, on the GPU."""
    import torch

    def fits(n: int) -> bool:
        x = torch.randint(0, model.config.vocab_size, (n, seq_len), device="cuda")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    return fits
