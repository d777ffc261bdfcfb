"""The speed settings: what ``auto`` resolves to, what each override does, and that none of it enters a fingerprint."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moe_experts.config import Preset, SpeedConfig, load_preset
from moe_experts.errors import ConfigError
from moe_experts.machine import COMPILE_ENV
from moe_experts.modeling import speed as speed_mod
from moe_experts.modeling.speed import is_compile_error, largest_fitting, resolve_speed


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    monkeypatch.setattr(speed_mod, "_compile_broken", None)


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cpu(monkeypatch, native):
    monkeypatch.setattr(speed_mod, "native_bf16", lambda device: native)
    s = resolve_speed(SpeedConfig(), device="cpu", batch_size=8, accumulation=2)
    assert s.precision == ("bf16" if native else "fp32")
    assert s.compile and s.fused_adamw
    assert s.attention == "eager"
    # the whole per-device batch in one pass: the preset's accumulation folds into the micro-batch
    assert (s.micro_batch_size, s.accumulation) == (16, 1)
    assert s.dataloader_workers == 0


def test_auto_on_gpu_probes_memory(monkeypatch):
    monkeypatch.setattr(speed_mod, "native_bf16", lambda device: True)
    tried = []

    def fits(n):
        tried.append(n)
        return n <= 8

    s = resolve_speed(SpeedConfig(), device="cuda", batch_size=32, accumulation=1, fits=fits)
    assert tried == [32, 16, 8]
    assert (s.micro_batch_size, s.accumulation, s.attention, s.precision, s.dataloader_workers) == (8, 4, "sdpa", "bf16", 2)


def test_every_setting_can_be_forced(monkeypatch):
    monkeypatch.setattr(speed_mod, "native_bf16", lambda device: True)
    config = SpeedConfig(compile="off", precision="fp32", attention="sdpa", micro_batch_size=2, fused_adamw=False,
                         dataloader_workers=3)
    s = resolve_speed(config, device="cpu", batch_size=8, accumulation=1)
    assert (s.compile, s.precision, s.attention, s.micro_batch_size, s.accumulation, s.fused_adamw,
            s.dataloader_workers) == (False, "fp32", "sdpa", 2, 4, False, 3)


def test_bf16_refused_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(speed_mod, "native_bf16", lambda device: False)
    with pytest.raises(ConfigError, match="does not support bf16"):
        resolve_speed(SpeedConfig(precision="bf16"), device="cuda", batch_size=8, accumulation=1)


@pytest.mark.parametrize("value", ["0", "off", "False", "no"])
def test_environment_turns_compile_off(monkeypatch, value, caplog):
    monkeypatch.setenv(COMPILE_ENV, value)
    assert not resolve_speed(SpeedConfig(compile="on"), device="cpu", batch_size=8, accumulation=1).compile
    assert not caplog.records  # asked for: no warning


def test_unsupported_compile_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(speed_mod, "compile_supported", lambda: "torch.compile is not supported on this Python")
    for _ in range(3):
        assert not resolve_speed(SpeedConfig(), device="cpu", batch_size=8, accumulation=1).compile
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1
    assert "--no-compile" in warnings[0].getMessage()


def test_largest_fitting():
    assert largest_fitting(32, lambda n: n <= 5) == 4
    assert largest_fitting(12, lambda n: n <= 5) == 3  # halves, then the next divisor down: 12, 6, 3
    assert largest_fitting(8, lambda n: True) == 8
    with pytest.raises(ConfigError, match="does not fit in device memory"):
        largest_fitting(8, lambda n: False)


def test_micro_batch_must_divide_the_batch():
    data = load_preset("micro").model_dump()
    with pytest.raises(ValidationError, match="does not divide"):
        Preset.model_validate({**data, "speed": {"micro_batch_size": 3}})
    with pytest.raises(ValidationError):
        Preset.model_validate({**data, "speed": {"micro_batch_size": 0}})
    with pytest.raises(ValidationError):
        Preset.model_validate({**data, "speed": {"compile": "sometimes"}})
    assert Preset.model_validate({**data, "speed": {"micro_batch_size": 2}}).speed.micro_batch_size == 2


def test_compile_switch_reads_as_written_in_yaml():
    """YAML reads a bare `on` / `off` as a boolean; the preset file means the switch, as the warning tells users."""
    import yaml

    data = load_preset("micro").model_dump()
    for text, expected in (("{compile: on}", "on"), ("{compile: off}", "off"), ("{compile: auto}", "auto")):
        speed = yaml.safe_load(text)
        assert Preset.model_validate({**data, "speed": speed}).speed.compile == expected


def test_speed_is_not_part_of_the_fingerprint():
    """A workspace trained one way is reused when the preset later runs another way (the manifest records how)."""
    from moe_experts.config import hash_json

    preset = load_preset("tiny")
    other = preset.model_copy(update={"speed": SpeedConfig(compile="off", precision="fp32")})
    assert other.fingerprint() == preset.fingerprint()
    # and a preset from before the speed section (and before generalist_decay, which it leaves unset) keeps the
    # fingerprint its workspaces recorded
    # (nor does a phase's budget_scale left unset: tiny sets it on the branches only)
    assert preset.generalist_decay is None and preset.seed_phase.budget_scale is None
    before = {k: v for k, v in preset.model_dump(mode="json").items() if k not in ("speed", "generalist_decay")}
    before["seed_phase"].pop("budget_scale")
    assert preset.fingerprint() == hash_json(before)
    changed = preset.model_copy(update={"batch_size": 4})
    assert changed.fingerprint() != preset.fingerprint()


def test_compile_errors_are_told_from_model_errors():
    from torch._dynamo.exc import BackendCompilerFailed, Unsupported

    try:
        try:
            raise BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler"), None)
        except Exception as inner:
            raise RuntimeError("the Trainer wrapped it") from inner
    except RuntimeError as wrapped:
        assert is_compile_error(wrapped)
    assert is_compile_error(Unsupported("graph break"))
    assert not is_compile_error(ValueError("shapes do not match"))
    assert not is_compile_error(RuntimeError("CUDA out of memory"))


def test_short_phases_are_not_compiled():
    """auto compiles a phase only when it is long enough to repay the compilation; on forces it."""
    config = SpeedConfig(compile_min_steps=200)
    assert resolve_speed(config, device="cpu", batch_size=8, accumulation=1, steps=400).compile
    assert not resolve_speed(config, device="cpu", batch_size=8, accumulation=1, steps=150).compile
    assert resolve_speed(SpeedConfig(compile="on"), device="cpu", batch_size=8, accumulation=1, steps=4).compile
    assert not resolve_speed(SpeedConfig(compile="off"), device="cpu", batch_size=8, accumulation=1, steps=10**6).compile


def test_auto_compile_threshold_is_per_device(monkeypatch):
    """A cold compile costs more on a CPU: auto compiles 1,000 steps on a GPU but not on a CPU."""
    monkeypatch.setattr(speed_mod, "native_bf16", lambda device: True)
    assert resolve_speed(SpeedConfig(), device="cuda", batch_size=8, accumulation=1, steps=600).compile
    assert not resolve_speed(SpeedConfig(), device="cpu", batch_size=8, accumulation=1, steps=1000).compile
    assert resolve_speed(SpeedConfig(), device="cpu", batch_size=8, accumulation=1, steps=2000).compile
