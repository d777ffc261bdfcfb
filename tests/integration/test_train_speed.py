"""The training fast path end to end on a micro-sized Llama: compiled training, the eager fallback, micro-batches.

These train through ``train_causal_lm`` (the Trainer with the resolved speed
settings) for a few steps on random tokens; nothing here is timed.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from moe_experts.config import PhaseConfig, SpeedConfig, load_preset
from moe_experts.modeling import speed as speed_mod
from moe_experts.modeling.checkpoints import new_model
from moe_experts.modeling.train import BlockDataset, train_causal_lm

STEPS = 4


class _Vocabulary:
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __len__(self) -> int:
        return 320


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv("MOE_EXPERTS_COMPILE", raising=False)
    monkeypatch.setattr(speed_mod, "_compile_broken", None)


def _run(tmp_path, name: str, speed: SpeedConfig, *, batch_size: int = 4, **kwargs):
    """(weights before, model, result, trainer) of STEPS steps on random tokens; kwargs go to train_causal_lm."""
    preset = load_preset("micro")
    preset = preset.model_copy(update={"speed": speed, "batch_size": batch_size, "save_steps": 100})
    model = new_model(preset, _Vocabulary(), seed=0)
    rng = np.random.default_rng(0)
    streams = [rng.integers(3, 320, 4000).astype(np.uint16) for _ in range(2)]
    data = BlockDataset(streams, preset.seq_len, STEPS * preset.tokens_per_step // preset.seq_len, seed=0)
    phase = PhaseConfig(steps=STEPS, learning_rate=1e-2, warmup_steps=1, schedule="constant")
    before = _weights(model)
    result, trainer = train_causal_lm(model, data, phase=phase, preset=preset, ckpt_dir=tmp_path / name,
                                      resume_from=None, seed=0, what=name, **kwargs)
    return before, model, result, trainer


def _train(tmp_path, name: str, speed: SpeedConfig, *, batch_size: int = 4):
    _, model, result, _ = _run(tmp_path, name, speed, batch_size=batch_size)
    return model, result


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _boom(*args, **kwargs):
    raise RuntimeError("inductor: no working C++ compiler (simulated)")


def test_compile_failure_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch, caplog):
    """The same run, eager, from the same weights: one warning, the manifest says it did not compile."""
    import torch._inductor.compile_fx as compile_fx

    eager_model, eager = _train(tmp_path, "eager", SpeedConfig(compile="off", precision="fp32"))
    monkeypatch.setattr(compile_fx, "compile_fx", _boom)
    with caplog.at_level(logging.WARNING, logger="moe_experts"):
        model, result = _train(tmp_path, "fallback", SpeedConfig(compile="on", precision="fp32"))
        _, again = _train(tmp_path, "again", SpeedConfig(compile="on", precision="fp32"))
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "simulated" in warnings[0] and "--no-compile" in warnings[0]
    assert result.steps == again.steps == STEPS
    assert result.speed["compile"] is False and again.speed["compile"] is False
    trained, reference = _weights(model), _weights(eager_model)
    for key in reference:
        torch.testing.assert_close(trained[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
    assert result.last_loss == pytest.approx(eager.last_loss, rel=1e-5)


def test_a_model_error_is_not_hidden_by_the_fallback(tmp_path, monkeypatch):
    """Only compile failures fall back: an error of the model itself still stops the run."""
    from transformers import LlamaForCausalLM

    def broken(self, *args, **kwargs):
        raise ValueError("the model is broken")

    monkeypatch.setattr(LlamaForCausalLM, "forward", broken)
    with pytest.raises(ValueError, match="the model is broken"):
        _train(tmp_path, "broken", SpeedConfig(compile="off", precision="fp32"))


def test_compiled_training_matches_eager(tmp_path):
    """torch.compile runs the training step here, and changes what it computes only by rounding."""
    eager_model, eager = _train(tmp_path, "eager", SpeedConfig(compile="off", precision="fp32"))
    model, result = _train(tmp_path, "compiled", SpeedConfig(compile="on", precision="fp32"))
    assert result.speed["compile"] is True
    assert result.last_loss == pytest.approx(eager.last_loss, rel=1e-3)
    trained, reference = _weights(model), _weights(eager_model)
    for key in reference:
        torch.testing.assert_close(trained[key], reference[key], rtol=1e-3, atol=1e-4, msg=key)


def test_micro_batches_accumulate_to_the_same_step(tmp_path):
    """Four micro-batches of one sequence make the same optimiser step as one batch of four."""
    whole_model, whole = _train(tmp_path, "whole", SpeedConfig(compile="off", precision="fp32"))
    split_model, split = _train(tmp_path, "split", SpeedConfig(compile="off", precision="fp32", micro_batch_size=1))
    assert (whole.speed["micro_batch_size"], whole.speed["accumulation"]) == (4, 1)
    assert (split.speed["micro_batch_size"], split.speed["accumulation"]) == (1, 4)
    assert split.tokens == whole.tokens
    a, b = _weights(whole_model), _weights(split_model)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_attention_kernel_is_restored_after_training(tmp_path):
    """Training may switch the attention kernel; the model (and so its saved config) keeps its own."""
    model, result = _train(tmp_path, "attn", SpeedConfig(compile="off", precision="fp32", attention="eager"))
    assert result.speed["attention"] == "eager"
    assert model.config._attn_implementation == "sdpa"


def test_branches_in_parallel_make_the_same_experts(trained_setup, tmp_path):
    """Two branches side by side, one process each, give the experts one after another gives (up to rounding)."""
    import shutil

    from moe_experts.modeling.stages import Setup, TrainOptions, model_manifest, train_experts
    from moe_experts.workspace import Workspace

    root = tmp_path / "parallel"
    shutil.copytree(trained_setup.workspace.root, root, ignore=shutil.ignore_patterns("generalist*", "checkpoints"))
    setup = Setup(workspace=Workspace(root), registry=trained_setup.registry, preset=trained_setup.preset)
    domains = [c.domain for c in setup.registry.starters][:2]
    built = train_experts(setup, domains, TrainOptions(force=True), parallel=2)
    assert [b.name for b in built] == [setup.registry.select([d])[0].name for d in domains]
    assert all(b.trained for b in built)
    for b in built:
        parallel, sequential = model_manifest(setup, b.name), model_manifest(trained_setup, b.name)
        assert parallel["inputs"] == sequential["inputs"]
        assert parallel["training"]["steps"] == sequential["training"]["steps"]
        p_val, s_val = parallel["training"]["validation"], sequential["training"]["validation"]
        assert p_val["start"] == pytest.approx(s_val["start"], rel=1e-4)  # the same seed, scored the same way
        assert p_val["best"] == pytest.approx(s_val["best"], rel=0.02)  # trained on one thread instead of two
    # current models are reused without starting a process
    again = train_experts(setup, domains, TrainOptions(), parallel=2)
    assert not any(b.trained for b in again)


def test_errors_keep_their_hint_across_processes():
    import pickle

    from moe_experts.errors import StaleArtifactError

    error = pickle.loads(pickle.dumps(StaleArtifactError("model 'law' is stale", hint="retrain it with --force")))
    assert type(error) is StaleArtifactError and error.hint == "retrain it with --force"
    assert str(error) == "model 'law' is stale\n  fix: retrain it with --force"


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_bf16_trains_under_autocast_without_an_fp32_copy_of_the_logits(tmp_path, monkeypatch, precision):
    """bf16: matrix multiplies run in bf16 over fp32 weights, and the logits are not cast back to fp32 as a whole.

    (accelerate's mixed precision wraps the forward pass in a cast of every output to fp32; the
    loss never reads that copy: 2.5 ms of a `tiny` step on CPU, under cProfile.)
    """
    from transformers import LlamaForCausalLM

    seen: dict[str, set] = {"linear": set(), "logits": set()}
    original = LlamaForCausalLM.__init__

    def hooked(self, config):
        original(self, config)
        self.model.layers[0].self_attn.q_proj.register_forward_hook(
            lambda m, i, out: seen["linear"].add(out.dtype) if m.training else None)
        self.register_forward_hook(lambda m, i, out: seen["logits"].add(out.logits.dtype) if m.training else None)

    monkeypatch.setattr(LlamaForCausalLM, "__init__", hooked)
    model, result = _train(tmp_path, precision, SpeedConfig(compile="off", precision=precision))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert result.speed["precision"] == precision
    assert seen == {"linear": {dtype}, "logits": {dtype}}
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_learning_rate_scales_apply_to_the_named_parameters_only(tmp_path):
    """A parameter-name suffix scales those parameters' learning rate (0 here: they stay put); the rest train."""
    before, model, _, trainer = _run(tmp_path, "scaled", SpeedConfig(compile="off", precision="fp32"),
                                     lr_scales={"self_attn.q_proj.weight": 0.0})
    after = _weights(model)
    frozen = [k for k in after if k.endswith("self_attn.q_proj.weight")]
    assert frozen
    for key in after:
        moved = not torch.equal(after[key], before[key])
        assert moved is (key not in frozen), key
    rates = sorted({group["lr"] for group in trainer.optimizer.param_groups})
    assert rates == [0.0, 1e-2]


@pytest.mark.parametrize("micro_batch_size", [4, 2])
def test_an_extra_loss_term_is_added_once_per_step(tmp_path, micro_batch_size):
    """The term (a per-micro-batch mean) enters each step's loss once, however many micro-batches make the step."""
    speed = SpeedConfig(compile="off", precision="fp32", micro_batch_size=micro_batch_size)
    _, _, plain, _ = _run(tmp_path, "plain", speed)
    _, _, extra, _ = _run(tmp_path, "extra", speed, extra_loss=lambda outputs: torch.tensor(5.0))
    assert extra.first_loss == pytest.approx(plain.first_loss + 5.0, abs=1e-4)
    assert extra.last_loss == pytest.approx(plain.last_loss + 5.0, abs=1e-4)  # a constant moves no weight
