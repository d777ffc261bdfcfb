"""`train-router --kind token`: merge the micro experts into a Mixtral MoE, train its gates, check health, evaluate."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from moe_experts.config import TokenRouterRecipe
from moe_experts.errors import TrainingError
from moe_experts.routing.train_token import token_router_dir, token_router_status, train_token_router
from tests.integration.test_cli import run_cli

FAST = {"training": {"steps": 4, "learning_rate": 0.01, "warmup_steps": 0, "weight_decay": 0.0},
        "gate_init_blocks_per_domain": 2, "health_blocks_per_domain": 2}


@pytest.fixture(scope="module")
def token_routed(trained_setup):
    recipe = TokenRouterRecipe.model_validate({**FAST, "dead_expert_share": 0.0})
    manifest = train_token_router(trained_setup, recipe)
    return trained_setup, recipe, manifest


def test_checkpoint_loads_with_auto_classes_and_generates(token_routed):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    setup, _, manifest = token_routed
    folder = token_router_dir(setup.workspace.root)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "MixtralForCausalLM"
    assert model.config.num_local_experts == len(setup.registry.names) and model.config.num_experts_per_tok == 2
    ids = tok("The quiet river", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    assert manifest["experts"] == list(setup.registry.names)
    assert manifest["training"]["trained"] == "gates"
    n_gate = model.config.num_hidden_layers * model.config.num_local_experts * model.config.hidden_size
    assert manifest["training"]["trainable_parameters"] == n_gate


def test_gates_moved_and_everything_else_stayed(token_routed):
    """--train gates: the experts' FFNs in the checkpoint are exactly the experts' own."""
    from transformers import AutoModelForCausalLM

    setup, _, _ = token_routed
    moe = AutoModelForCausalLM.from_pretrained(token_router_dir(setup.workspace.root))
    name = setup.registry.names[1]
    expert = AutoModelForCausalLM.from_pretrained(setup.workspace.model_dir(name))
    got = moe.model.layers[0].mlp.experts.down_proj[1]
    assert torch.equal(got, expert.model.layers[0].mlp.down_proj.weight)


def test_health_is_recorded_and_printed(token_routed):
    setup, _, manifest = token_routed
    health = manifest["health"]
    layers = health["layers"]
    assert len(layers) == setup.preset.model.num_hidden_layers
    for row in layers:
        assert sum(row["share"].values()) == pytest.approx(1.0, abs=1e-3)
        assert set(row["share_by_domain"]) == set(setup.registry.domains)
        assert 0 < row["mean_token_entropy"] <= 1
    assert health["aux_loss"] > 0
    folder = token_router_dir(setup.workspace.root)
    assert json.loads((folder / "health.json").read_text())["layers"] == layers
    assert "token share per expert" in (folder / "health.md").read_text()


def test_status_is_current_then_stale_with_another_recipe(token_routed):
    setup, recipe, _ = token_routed
    assert token_router_status(setup, recipe)[0] == "current"
    status, diffs = token_router_status(setup, recipe.model_copy(update={"top_k": 1}))
    assert status == "stale" and any(d.startswith("recipe") for d in diffs)


def test_dead_experts_stop_the_save(token_routed):
    setup, recipe, _ = token_routed
    folder = token_router_dir(setup.workspace.root)
    before = (folder / "model.safetensors").read_bytes()
    strict = recipe.model_copy(update={"dead_expert_share": 0.99})  # every expert is "dead" at 99%
    with pytest.raises(TrainingError, match="dead expert"):
        train_token_router(setup, strict)
    assert (folder / "model.safetensors").read_bytes() == before  # nothing overwritten


def test_cli_flags_and_eval_system(token_routed, tmp_path):
    setup, _, _ = token_routed
    base = ["--preset", "micro", "--cards", setup.registry.source_dir, "-w", str(setup.workspace.root)]
    wrong = run_cli(*base, "train-router", "--train", "all")
    assert wrong.returncode == 2 and "only apply to --kind token" in wrong.stderr
    recipe = tmp_path / "token.yaml"
    recipe.write_text(yaml.safe_dump({**FAST, "dead_expert_share": 0.0}))
    again = run_cli(*base, "train-router", "--kind", "token", "--recipe", str(recipe))
    assert again.returncode == 0, again.stderr
    assert "token router: up to date" in again.stdout
    out = run_cli(*base, "eval", "--max-docs", "3", "--resamples", "100", "--systems", "generalist,token-moe",
                  "--no-suites", "--no-timing", "--name", "with-moe")
    assert out.returncode == 0, out.stderr
    report = json.loads((setup.workspace.reports_dir / "with-moe" / "report.json").read_text())
    assert [s["name"] for s in report["systems"]] == ["generalist", "token-moe"]
    cost = report["cost"]["token-moe"]
    assert cost["active_params"] < cost["total_params"]
