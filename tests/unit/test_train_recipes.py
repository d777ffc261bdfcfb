"""benchmarks/train_recipes.py: a variant is the preset with dotted fields set, validated like a preset file."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from benchmarks.train_recipes import (NOT_EXPERTS, NOT_GENERALIST, NOT_SEED, apply_changes, parse_variant, result_of,
                                      reuse_key)
from moe_experts.config import load_preset


def test_a_variant_names_fields_by_path_and_reads_values_as_yaml():
    assert parse_variant("preset:") == ("preset", {})
    label, changes = parse_variant("zero:branch_phase.min_lr_ratio=0,generalist_decay.schedule=linear,model.hidden_size=96")
    assert label == "zero"
    assert changes == {"branch_phase.min_lr_ratio": 0, "generalist_decay.schedule": "linear", "model.hidden_size": 96}
    for bad in ("no-colon", ":x=1", "v:branch_phase.steps"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_variant(bad)


def test_changes_apply_to_a_copy_with_the_training_seed_and_are_validated():
    tiny = load_preset("tiny")
    _, changes = parse_variant("v:branch_phase.schedule=1-sqrt,branch_phase.min_lr_ratio=0,"
                               "generalist_decay.schedule=linear,generalist_decay.min_lr_ratio=0")
    preset = apply_changes(tiny, changes, seed=7)
    assert (preset.seed, preset.branch_phase.schedule, preset.branch_phase.min_lr_ratio) == (7, "1-sqrt", 0.0)
    assert preset.generalist_phase(10_240).schedule == "linear"
    assert (tiny.seed, tiny.branch_phase.schedule, tiny.generalist_decay) == (1234, "cosine", None)  # untouched
    assert apply_changes(tiny, {}, seed=tiny.seed).fingerprint() == tiny.fingerprint()
    with pytest.raises(ValidationError, match="schedule"):
        apply_changes(tiny, {"branch_phase.schedule": "step"}, seed=1)
    with pytest.raises(ValidationError, match="no_such_field"):
        apply_changes(tiny, {"branch_phase.no_such_field": 1}, seed=1)


def _row(variant: str, seed: int, code: float) -> dict:
    return {"variant": variant, "changes": {}, "training_seed": seed, "ratio": {"code": code, "law": 1.0},
            "experts": {"code": code, "law": 2.0}, "generalist": {"code": 1.0, "law": 2.0}}


def test_a_partial_result_summarises_only_the_variants_it_has_rows_for():
    variants = [("preset", {}, []), ("glr2", {}, [])]
    rows = [_row("preset", 1, 0.90), _row("preset", 2, 0.94)]
    partial = result_of(rows, variants, [1, 2], "tiny", "2026-12-01", complete=False)
    assert partial["complete"] is False and partial["rows"] == rows
    assert [s["variant"] for s in partial["summary"]] == ["preset"]  # glr2 has no row yet: no summary for it
    assert partial["summary"][0]["seeds"] == 2
    assert partial["summary"][0]["ratio"]["code"]["mean"] == pytest.approx(0.92)
    done = result_of(rows + [_row("glr2", 1, 0.97), _row("glr2", 2, 0.99)], variants, [1, 2], "tiny", "2026-12-01",
                     complete=True)
    assert done["complete"] is True and [s["variant"] for s in done["summary"]] == ["preset", "glr2"]


def test_a_model_is_reused_only_across_variants_that_leave_its_recipe_alone():
    tiny = load_preset("tiny")
    base, generalist_only, branches, seed_lr, other_seed = (
        apply_changes(tiny, changes, seed=s) for changes, s in [
            ({}, 1), ({"generalist_learning_rate": tiny.generalist_learning_rate / 2}, 1),
            ({"branch_phase.min_lr_ratio": tiny.branch_phase.min_lr_ratio / 2}, 1),
            ({"seed_phase.learning_rate": tiny.seed_phase.learning_rate / 2}, 1), ({}, 2)])

    def same(a, b, ignored):
        return reuse_key(a, ignored, model="m") == reuse_key(b, ignored, model="m")

    # the generalist's learning rate: seed and experts reused, generalist trained again
    assert same(base, generalist_only, NOT_SEED) and same(base, generalist_only, NOT_EXPERTS)
    assert not same(base, generalist_only, NOT_GENERALIST)
    # the branches' decay: the seed reused, the experts trained again (the generalist by its tokens)
    assert same(base, branches, NOT_SEED) and not same(base, branches, NOT_EXPERTS)
    # the seed's learning rate: seed and experts trained again; the generalist reused when the tokens are the same
    assert not same(base, seed_lr, NOT_SEED) and not same(base, seed_lr, NOT_EXPERTS)
    assert same(base, seed_lr, NOT_GENERALIST)
    # another training seed: nothing reused
    assert not any(same(base, other_seed, ignored) for ignored in (NOT_SEED, NOT_EXPERTS, NOT_GENERALIST))
    # a domain's branch budget: the seed reused, the experts trained again (the generalist by its tokens)
    scaled = apply_changes(tiny, {"branch_phase.budget_scale.code": 1.5}, seed=1)
    assert scaled.branch_phase.budget_scale["code"] == 1.5 != (base.branch_phase.budget_scale or {}).get("code")
    assert same(base, scaled, NOT_SEED) and not same(base, scaled, NOT_EXPERTS)


def test_an_unset_budget_scale_keeps_the_keys_a_cache_was_filled_under():
    from moe_experts.config import hash_json

    base = apply_changes(load_preset("tiny"), {}, seed=1)
    before = base.model_dump(mode="json", exclude=NOT_SEED)  # as the key was built before the field existed
    before["seed_phase"].pop("budget_scale")
    assert reuse_key(base, NOT_SEED, model="m") == hash_json({"preset": before, "model": "m"})


def test_a_kept_cache_is_reused_only_for_the_same_data(tmp_path):
    from benchmarks.train_recipes import CACHE_DATA, open_cache

    data = {"corpus_hash": "c1", "tokenizer_hash": "t1"}
    cache = tmp_path / "cache"
    open_cache(cache, data, keep=True)
    (cache / "key1").mkdir()
    open_cache(cache, data, keep=True)  # the same data: what an earlier run trained stays
    assert (cache / "key1").is_dir()
    with pytest.raises(ValueError, match="other corpora or another tokenizer"):
        open_cache(cache, {**data, "tokenizer_hash": "t2"}, keep=True)
    assert (cache / "key1").is_dir()  # refused, and nothing removed
    open_cache(cache, {**data, "tokenizer_hash": "t2"}, keep=False)  # a run's own cache starts empty
    assert sorted(p.name for p in cache.iterdir()) == [CACHE_DATA]
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a train_recipes cache"):
        open_cache(stranger, data, keep=True)
    assert (stranger / "notes.txt").exists()


def test_a_copy_left_half_written_by_a_stopped_run_is_replaced(tmp_path):
    from types import SimpleNamespace

    from benchmarks.train_recipes import reuse_or_train

    models = tmp_path / "ws"
    setup = SimpleNamespace(workspace=SimpleNamespace(model_dir=lambda name: models / name))
    cache = tmp_path / "cache"
    (cache / ".k1.partial" / "seed").mkdir(parents=True)  # a kept cache, after a run was stopped mid-copy
    (cache / ".k1.partial" / "seed" / "half.bin").write_text("x")

    def train():
        (models / "seed").mkdir(parents=True)
        (models / "seed" / "model.safetensors").write_text("weights")

    reuse_or_train(cache, "k1", setup, "seed", train)
    assert sorted(p.name for p in (cache / "k1" / "seed").iterdir()) == ["model.safetensors"]
    assert not (cache / ".k1.partial").exists()
