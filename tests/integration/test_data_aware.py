"""Data-aware training on the micro preset: repeats capped, validation keeps the best, never worse than the start."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace

import pytest
import torch

from moe_experts.config import ValidationConfig
from moe_experts.data.tokenizer import load_stream, load_tokenizer
from moe_experts.errors import MissingArtifactError
from moe_experts.modeling.checkpoints import load_checkpoint
from moe_experts.modeling.generalist import train_generalists
from moe_experts.modeling.stages import SEED, Setup, TrainOptions, model_manifest, train_experts
from moe_experts.modeling.validation import bits_per_byte, validation_set
from moe_experts.workspace import Workspace


def _copy(setup: Setup, tmp_path, name: str, *, ignore: tuple[str, ...] = ("generalist*", "checkpoints"), **preset) -> Setup:
    """A private copy of the trained micro workspace (seed, experts), with preset fields changed."""
    root = tmp_path / name
    shutil.copytree(setup.workspace.root, root, ignore=shutil.ignore_patterns(*ignore))
    return Setup(workspace=Workspace(root), registry=setup.registry, preset=setup.preset.model_copy(update=preset))


def _tokens_hash(setup: Setup) -> str:
    return model_manifest(setup, SEED)["inputs"]["tokenizer_hash"]


def _val_bpb(setup: Setup, name: str, domain: str, *, speed: dict | None = None) -> float:
    """A saved model's validation bits per byte; with ``speed`` (a run's manifest), scored the way that run scored."""
    loaded = load_checkpoint(setup.workspace.model_dir(name))
    bf16 = None
    if speed is not None:  # under bf16 the rounding depends on the attention kernel and the batch shape
        loaded.model.set_attn_implementation(speed["attention"])
        bf16 = speed["precision"] == "bf16"
    val = validation_set({domain: load_stream(setup.workspace, _tokens_hash(setup), domain, "val")}, loaded.tokenizer,
                         seq_len=setup.preset.seq_len, tokens_per_domain=setup.preset.validation.tokens_per_domain)
    return bits_per_byte(loaded.model, val, batch_size=setup.preset.batch_size, bf16=bf16)[domain]


def test_repeats_of_a_small_domain_are_capped(trained_setup, tmp_path):
    """A budget of steps far beyond the data is cut to max_epochs passes over the branch's domain."""
    branch = trained_setup.preset.branch_phase.model_copy(update={"steps": 100_000, "max_epochs": 0.5})
    setup = _copy(trained_setup, tmp_path, "capped", branch_phase=branch)
    law = train_experts(setup, ["law"], TrainOptions(force=True))[0].manifest["training"]
    train_tokens = len(load_stream(setup.workspace, _tokens_hash(setup), "law", "train"))
    expected = math.floor(0.5 * train_tokens / setup.preset.tokens_per_step)
    assert law["budget"]["capped"] and law["budget"]["planned_steps"] == 100_000
    assert law["steps"] == law["budget"]["resolved_steps"] == expected
    assert 0.45 < law["budget"]["epochs_per_domain"]["law"] <= 0.5


def test_a_domain_scaled_branch_trains_its_share_and_the_generalist_follows(trained_setup, tmp_path, caplog):
    """budget_scale gives code twice the branch steps and general half; an unknown domain is warned about."""
    branch = trained_setup.preset.branch_phase.model_copy(update={"budget_scale": {"code": 2.0, "general": 0.5,
                                                                                   "cooking": 3.0}})
    setup = _copy(trained_setup, tmp_path, "scaled", branch_phase=branch,
                  validation=ValidationConfig(every_steps=2, patience=None, tokens_per_domain=256))
    steps = trained_setup.preset.branch_phase.steps
    with caplog.at_level("WARNING", logger="moe_experts"):
        # card by card, as the pipeline trains them: the warning comes once, not once per call
        built = {d: train_experts(setup, [d], TrainOptions(force=True))[0].manifest["training"]
                 for d in ("code", "general", "law")}
    assert caplog.text.count("budget_scale names cooking, which no card declares") == 1
    assert (built["code"]["steps"], built["general"]["steps"], built["law"]["steps"]) == (2 * steps, steps // 2, steps)
    assert (built["code"]["budget"]["scale"], built["law"]["budget"]["scale"]) == (2.0, 1.0)
    train_experts(setup, ["medicine"], TrainOptions(force=True))
    generalist = train_generalists(setup, TrainOptions(force=True))[0].manifest
    consumed = {n: model_manifest(setup, n)["training"]["tokens"] for n in [SEED, *setup.registry.names]}
    assert generalist["training"]["tokens"] == sum(consumed.values())
    assert consumed["code"] == 4 * consumed["general"] == 2 * consumed["law"]


def test_a_branch_is_never_saved_worse_than_its_seed(trained_setup, tmp_path):
    """A branch that only gets worse (learning rate 2.0 diverges) keeps the seed's weights, and stops early.

    Without validation the same run saves the diverged model: the guarantee is what the test checks.
    """
    diverging = trained_setup.preset.branch_phase.model_copy(update={"steps": 40, "learning_rate": 2.0})
    guarded = _copy(trained_setup, tmp_path, "guarded", branch_phase=diverging,
                    validation=ValidationConfig(every_steps=2, patience=3, tokens_per_domain=256))
    law = train_experts(guarded, ["law"], TrainOptions(force=True))[0].manifest["training"]
    assert law["validation"]["stopped_early"] and law["steps"] < 40
    assert law["kept_step"] == 0 and law["kept_tokens"] == 0
    seed = load_checkpoint(guarded.workspace.model_dir(SEED)).model.state_dict()
    kept = load_checkpoint(guarded.workspace.model_dir("law")).model.state_dict()
    assert all(torch.equal(seed[k], kept[k]) for k in seed)
    seed_bpb = _val_bpb(guarded, SEED, "law")
    assert _val_bpb(guarded, "law", "law") == pytest.approx(seed_bpb, rel=1e-6)

    blind = _copy(trained_setup, tmp_path, "blind", branch_phase=diverging, validation=ValidationConfig())
    law = train_experts(blind, ["law"], TrainOptions(force=True))[0].manifest["training"]
    assert law["validation"] is None and law["steps"] == 40
    assert _val_bpb(blind, "law", "law") > seed_bpb + 0.1


def test_best_checkpoint_is_the_one_kept(trained_setup, tmp_path):
    """The weights saved score the best validation value of the run, wherever in the run it was."""
    setup = _copy(trained_setup, tmp_path, "best", branch_phase=trained_setup.preset.branch_phase.model_copy(
        update={"steps": 12, "learning_rate": 0.05}), validation=ValidationConfig(every_steps=2, tokens_per_domain=256))
    med = train_experts(setup, ["medicine"], TrainOptions(force=True))[0].manifest["training"]
    history = dict((int(s), v) for s, v in med["validation"]["history"])
    assert med["kept_step"] == min(history, key=history.get)
    assert _val_bpb(setup, "medicine", "medicine", speed=med["speed"]) == pytest.approx(history[med["kept_step"]], rel=1e-5)


def test_generalist_needs_the_tokens_it_is_matched_to(trained_setup, tmp_path):
    setup = _copy(trained_setup, tmp_path, "bare", ignore=("models", "checkpoints"))
    with pytest.raises(MissingArtifactError, match="seed, code, general, law, medicine are not trained"):
        train_generalists(setup)


def test_generalist_matches_what_early_stopping_consumed(trained_setup, tmp_path):
    diverging = trained_setup.preset.branch_phase.model_copy(update={"steps": 40, "learning_rate": 1.0})
    setup = _copy(trained_setup, tmp_path, "stopped", branch_phase=diverging,
                  validation=ValidationConfig(every_steps=2, patience=2, tokens_per_domain=256))
    stopped = train_experts(setup, ["code"], TrainOptions(force=True))[0].manifest["training"]
    assert stopped["steps"] < 40
    # The generalist trains without patience: whether its own diverging run would stop early depends on the
    # data (the law corpus includes the installed packages' licences), and this test is about its budget.
    setup = replace(setup, preset=setup.preset.model_copy(
        update={"validation": ValidationConfig(every_steps=2, patience=None, tokens_per_domain=256)}))
    generalist = train_generalists(setup, TrainOptions(force=True))[0].manifest
    consumed = {n: model_manifest(setup, n)["training"]["tokens"] for n in [SEED, *setup.registry.names]}
    assert generalist["matched_to"] == consumed
    assert generalist["training"]["tokens"] == sum(consumed.values())  # micro: whole steps


def test_shared_trunk_branches_train_only_their_ffns(trained_setup, tmp_path):
    """branch_trunk: frozen (DEMix): everything but the FFNs stays the seed's, so the token-level merge is exact."""
    from moe_experts.routing.token_moe import MergeSpec, merge_experts
    from tests.unit.test_token_moe import _force_gate

    setup = _copy(trained_setup, tmp_path, "demix", branch_trunk="frozen",
                  branch_phase=trained_setup.preset.branch_phase.model_copy(update={"steps": 6}))
    built = train_experts(setup, None, TrainOptions(force=True))
    assert all(b.manifest["trunk"] == "frozen" and b.manifest["frozen_parameters"] > 0 for b in built)
    seed = load_checkpoint(setup.workspace.model_dir(SEED)).model
    experts = [load_checkpoint(setup.workspace.model_dir(c.name)).model for c in setup.registry.starters]
    for name, param in seed.state_dict().items():
        moved = [not torch.equal(param, e.state_dict()[name]) for e in experts]
        assert any(moved) if ".mlp." in name else not any(moved), name
    moe = merge_experts(experts, experts, MergeSpec(experts=tuple(setup.registry.names), top_k=2))
    tokenizer = load_tokenizer(setup.workspace.tokenizer_dir)
    ids = torch.tensor([tokenizer("Permission is hereby granted, free of charge, to any person")["input_ids"]])
    for i, expert in enumerate(experts):
        _force_gate(moe, i)
        with torch.no_grad():
            torch.testing.assert_close(moe(input_ids=ids).logits, expert(input_ids=ids).logits, atol=1e-5, rtol=0)
