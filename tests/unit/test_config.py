"""Cards and presets: every shipped one validates, broken ones are refused by file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from moe_experts.config import (
    PRESETS_DIR,
    ExpertCard,
    hash_json,
    load_card,
    load_preset,
    load_registry,
    shipped_presets,
)
from moe_experts.errors import ConfigError, UnknownDomainError
from tests.conftest import REPO, card

SHIPPED_CARDS = sorted((REPO / "experts").glob("*.yaml"))
EXTRA_CARDS = sorted((REPO / "experts").glob("*/*.yaml"))  # cards to add (`experts add`), not loaded by default


def test_repository_ships_the_four_domains_and_extra_cards_to_add():
    assert [p.stem for p in SHIPPED_CARDS] == ["code", "general", "law", "medicine"]
    assert [p.stem for p in EXTRA_CARDS] == ["unix"]
    extra = load_card(EXTRA_CARDS[0])
    assert not extra.fallback and extra.domain not in load_registry(REPO / "experts").domains


@pytest.mark.parametrize("path", SHIPPED_CARDS + EXTRA_CARDS, ids=lambda p: p.stem)
def test_every_shipped_card_validates(path: Path):
    c = load_card(path)
    assert c.name == path.stem
    assert c.examples.positive and c.examples.negative
    assert c.corpus.sources


def test_shipped_registry_has_one_fallback_and_sorted_cards():
    registry = load_registry(REPO / "experts")
    assert registry.names == sorted(registry.names)
    assert registry.fallback.name == "general"
    assert len(registry.starters) == 4


@pytest.mark.parametrize("name", shipped_presets())
def test_every_shipped_preset_validates(name: str):
    preset = load_preset(name)
    assert preset.name == name
    assert preset.tokens_per_step == preset.seq_len * preset.batch_size * preset.gradient_accumulation_steps


def test_presets_listed_are_the_files():
    assert shipped_presets() == sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    assert {"micro", "tiny", "small"} <= set(shipped_presets())


def _write(folder: Path, data: dict, name: str | None = None) -> Path:
    path = folder / f"{name or data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_missing_field_names_file_and_field(tmp_path: Path):
    data = card("law", [{"kind": "hpo"}])
    del data["description"]
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_card(path)
    assert str(path) in str(err.value)
    assert "description" in str(err.value)


def test_wrong_type_and_unknown_field_are_named(tmp_path: Path):
    data = card("law", [{"kind": "hpo"}])
    data["corpus"]["min_documents"] = "many"
    data["colour"] = "blue"
    with pytest.raises(ConfigError) as err:
        load_card(_write(tmp_path, data))
    message = str(err.value)
    assert "corpus.min_documents" in message
    assert "colour" in message


def test_unknown_source_kind_lists_known_ones(tmp_path: Path):
    data = card("law", [{"kind": "wikipedia"}])
    with pytest.raises(ConfigError) as err:
        load_card(_write(tmp_path, data))
    assert "wikipedia" in str(err.value)
    assert "python_stdlib" in str(err.value)


def test_source_options_are_strict(tmp_path: Path):
    data = card("law", [{"kind": "hpo", "pth": "/x"}])
    with pytest.raises(ConfigError, match="pth"):
        load_card(_write(tmp_path, data))


def test_name_must_match_file(tmp_path: Path):
    path = _write(tmp_path, card("law", [{"kind": "hpo"}]), name="legal")
    with pytest.raises(ConfigError, match="differs from the file name"):
        load_card(path)


def test_invalid_yaml_is_reported(tmp_path: Path):
    path = tmp_path / "law.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_card(path)


def test_model_source_shorthand():
    base = card("law", [{"kind": "hpo"}])
    assert ExpertCard.model_validate(base).model.kind == "starter"
    hf = ExpertCard.model_validate({**base, "model": "org/some-model"})
    assert (hf.model.kind, hf.model.name_or_path) == ("pretrained", "org/some-model")
    with pytest.raises(ValueError, match="name_or_path"):
        ExpertCard.model_validate({**base, "model": {"kind": "pretrained"}})


def test_registry_rules(tmp_path: Path):
    a = tmp_path / "a"
    a.mkdir()
    _write(a, card("law", [{"kind": "hpo"}]))
    _write(a, card("code", [{"kind": "hpo"}]))
    with pytest.raises(ConfigError, match="fallback"):
        load_registry(a)
    _write(a, card("general", [{"kind": "hpo"}], fallback=True))
    dup = card("medicine", [{"kind": "hpo"}])
    dup["domain"] = "law"
    _write(a, dup)
    with pytest.raises(ConfigError, match="both declare domain 'law'"):
        load_registry(a)


def test_a_fifth_expert_is_just_a_card(tmp_path: Path):
    for name in ("code", "general", "law", "medicine"):
        (tmp_path / f"{name}.yaml").write_text((REPO / "experts" / f"{name}.yaml").read_text())
    _write(tmp_path, card("finance", [{"kind": "local", "path": "finance/*.txt"}]))
    registry = load_registry(tmp_path)
    assert "finance" in registry.domains
    assert registry.by_domain("finance").name == "finance"


def test_unknown_domain_names_the_known_ones():
    registry = load_registry(REPO / "experts")
    with pytest.raises(UnknownDomainError) as err:
        registry.select(["law", "finance"])
    assert "finance" in str(err.value) and "medicine" in str(err.value)


def test_unknown_preset_lists_shipped(tmp_path: Path):
    with pytest.raises(ConfigError, match="tiny"):
        load_preset("huge")
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load((PRESETS_DIR / "micro.yaml").read_text()), "seq_len": 0}))
    with pytest.raises(ConfigError, match="seq_len"):
        load_preset(str(bad))


def test_phase_budgets_resolve_against_the_data():
    from moe_experts.config import PhaseConfig

    domains = {"big": 100_000, "small": 10_000}
    steps = PhaseConfig(steps=50, learning_rate=1e-3).resolve(1_000, domains)
    assert (steps.steps, steps.capped) == (50, False)
    assert steps.epochs == {"big": 0.25, "small": 2.5}  # each step is half one domain, half the other
    assert PhaseConfig(tokens=12_345, learning_rate=1e-3).resolve(1_000, domains).steps == 13
    assert PhaseConfig(epochs=2, learning_rate=1e-3).resolve(1_000, domains).steps == 220
    capped = PhaseConfig(steps=500, max_epochs=3, warmup_steps=100, learning_rate=1e-3).resolve(1_000, domains)
    assert (capped.steps, capped.planned_steps, capped.capped) == (60, 500, True)  # 3 passes over 'small'
    assert capped.epochs["small"] == 3.0
    assert capped.warmup_steps == 6  # a warmup longer than half the cut run shrinks to a tenth of it
    with pytest.raises(ValidationError, match="exactly one budget"):
        PhaseConfig(steps=5, tokens=10, learning_rate=1e-3)
    with pytest.raises(ValidationError, match="exactly one budget"):
        PhaseConfig(learning_rate=1e-3)


def test_a_branch_budget_scales_by_its_domain():
    from moe_experts.config import PhaseConfig

    phase = PhaseConfig(steps=150, warmup_steps=25, learning_rate=1e-3, budget_scale={"code": 4 / 3, "general": 2 / 3})
    code, general, law = (phase.resolve(1_000, {d: 10**6}) for d in ("code", "general", "law"))
    assert (code.steps, general.steps, law.steps) == (200, 100, 150)  # rounded, not 201 from 200.00000000000003
    assert (code.scale, law.scale) == (4 / 3, 1.0) and "1.33333x the phase's budget" in code.describe()
    assert code.warmup_steps == general.warmup_steps == 25
    assert PhaseConfig(tokens=150_000, learning_rate=1e-3, budget_scale={"code": 2}).resolve(1_000, {"code": 10**6}).steps == 300
    # the cap on repeats still binds after scaling
    capped = PhaseConfig(steps=100, max_epochs=1, learning_rate=1e-3, budget_scale={"code": 3}).resolve(1_000, {"code": 200_000})
    assert (capped.planned_steps, capped.steps, capped.capped) == (300, 200, True)
    with pytest.raises(ValueError, match="one domain at a time"):
        phase.resolve(1_000, {"code": 10**6, "law": 10**6})
    for bad, message in (({"code": 0}, "above 0"), ({"Code": 1.0}, "not a domain name"), ({"code": 101}, "at most 100")):
        with pytest.raises(ValidationError, match=message):
            PhaseConfig(steps=10, learning_rate=1e-3, budget_scale=bad)


def test_budget_scale_is_for_branches_and_in_the_fingerprint_only_when_set(tmp_path: Path):
    tiny = load_preset("tiny")
    data = tiny.model_dump(mode="json")
    data["seed_phase"]["budget_scale"] = {"code": 2.0}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**data, "name": "bad"}))
    with pytest.raises(ConfigError, match="seed_phase.budget_scale"):
        load_preset(str(bad))
    unset = tiny.model_copy(update={"branch_phase": tiny.branch_phase.model_copy(update={"budget_scale": None})})
    scaled = tiny.model_copy(update={"branch_phase": tiny.branch_phase.model_copy(update={"budget_scale": {"code": 1.5}})})
    assert unset.fingerprint() != scaled.fingerprint()
    # a preset that sets no scale hashes as it did before the field existed: its models stay current
    before = tiny.model_dump(mode="json", exclude={"speed"})
    for phase in ("seed_phase", "branch_phase"):
        before[phase].pop("budget_scale")
    if before.get("generalist_decay") is None:
        before.pop("generalist_decay", None)
    assert unset.fingerprint() == hash_json(before)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "1-sqrt", "constant"])
def test_each_schedule_warms_up_then_follows_its_curve_to_the_floor(schedule: str):
    """The Trainer's scheduler, built from a phase as training builds it, gives the curve the phase names."""
    import math

    import torch
    from transformers.optimization import get_scheduler

    from moe_experts.config import PhaseConfig
    from moe_experts.modeling.train import scheduler_arguments

    steps, warmup, floor = 100, 10, 0.1
    phase = PhaseConfig(steps=steps, warmup_steps=warmup, learning_rate=1.0, schedule=schedule, min_lr_ratio=floor)
    args = scheduler_arguments(phase)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(args["lr_scheduler_type"], optimizer, num_warmup_steps=warmup,
                              num_training_steps=steps, scheduler_specific_kwargs=args["lr_scheduler_kwargs"])
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[warmup] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(rates[:warmup - 1], rates[1:warmup]))  # warmup rises
    progress = 0.5  # halfway through the decay
    mid = rates[warmup + int(progress * (steps - warmup))]
    expected = {"cosine": floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)),
                "linear": floor + (1 - floor) * (1 - progress),
                "1-sqrt": floor + (1 - floor) * (1 - math.sqrt(progress)),
                "constant": 1.0}[schedule]
    assert mid == pytest.approx(expected, abs=0.02)
    if schedule == "constant":
        assert rates[-1] == pytest.approx(1.0)
    else:
        assert all(a >= b for a, b in zip(rates[warmup:], rates[warmup + 1:]))  # never rises again
        assert floor <= rates[-1] < floor + 0.03


def test_the_generalist_decays_as_its_preset_says_and_a_set_decay_is_in_the_fingerprint():
    # an unset decay leaving the old fingerprint as it was: tests/unit/test_speed.py
    from moe_experts.config import Preset

    tiny = load_preset("tiny")
    phase = tiny.generalist_phase(1_024_000)
    assert (phase.steps, phase.schedule, phase.min_lr_ratio) == (1_000, "cosine", 0.1)  # unset: cosine to 0.1
    data = tiny.model_dump(mode="python")
    explicit = Preset.model_validate({**data, "generalist_decay": {"schedule": "cosine", "min_lr_ratio": 0.1}})
    assert explicit.generalist_phase(1_024_000) == phase
    linear = Preset.model_validate({**data, "generalist_decay": {"schedule": "linear", "min_lr_ratio": 0.0}})
    assert (linear.generalist_phase(1_024_000).schedule, linear.generalist_phase(1_024_000).min_lr_ratio) == ("linear", 0.0)
    assert linear.fingerprint() != tiny.fingerprint()  # a set decay is part of what the models were trained from
    with pytest.raises(ValidationError, match="schedule"):
        Preset.model_validate({**data, "generalist_decay": {"schedule": "step"}})
