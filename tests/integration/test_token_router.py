"""`train-router --kind token`: merge the micro experts into a Mixtral MoE, train its gates, check health, evaluate."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from moe_experts.recipes import TokenRouterRecipe
from moe_experts.errors import TrainingError
from moe_experts.routing.train_token import token_router_dir, token_router_status, train_token_router
from tests.integration.test_cli import run_cli

FAST = {"train": "gates", "training": {"steps": 4, "learning_rate": 0.01, "warmup_steps": 0, "weight_decay": 0.0},
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
    assert manifest["training"]["learning_rate"] == FAST["training"]["learning_rate"]
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


def test_the_eval_fingerprint_names_the_live_token_router(token_routed):
    """eval reuses a cached report only when its inputs are equal: the token router's live version is one."""
    from moe_experts.evaluation.options import EvalOptions
    from moe_experts.evaluation.runner import eval_inputs
    from moe_experts.workspace import MANIFEST, live_dir, sha256_file

    setup, _, _ = token_routed
    routers = eval_inputs(setup, EvalOptions(), [c.domain for c in setup.registry.cards])["routers"]
    live = live_dir(setup.workspace.router_dir("token"))
    assert live.name.startswith("v-") and routers["token"] == sha256_file(live / MANIFEST)[:16]


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
    load = report["expert_load"]["token-moe"]
    assert load["experts"] == list(setup.registry.names) and len(load["layers"]) == setup.preset.model.num_hidden_layers
    assert set(load["layers"][0]["share_by_domain"]) == set(report["domains"])
    folder = setup.workspace.reports_dir / "with-moe"
    assert (folder / report["files"]["plots"]["expert_load:token-moe"]).stat().st_size > 1000
    assert "Expert load: token-moe" in (folder / "report.md").read_text()


def test_ask_with_the_token_router(token_routed):
    setup, _, _ = token_routed
    base = ["--preset", "micro", "--cards", setup.registry.source_dir, "-w", str(setup.workspace.root), "ask"]
    out = run_cli(*base, "--router", "token", "--text", "The quiet river", "--max-new-tokens", "6", "--seed", "0",
                  "--json", "--explain", "--layer", "0")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["router"] == "token" and 1 <= row["new_tokens"] <= 6
    tokens = row["explain"]["tokens"]
    assert row["explain"]["layer"] == 0 and len(tokens) == row["new_tokens"]
    assert all(len(t["experts"]) == 2 and set(t["experts"]) <= set(setup.registry.names) for t in tokens)
    assert all(t["majority"] in setup.registry.names for t in tokens)
    text = run_cli(*base, "--router", "token", "--text", "The quiet river", "--max-new-tokens", "4", "--explain")
    assert text.returncode == 0 and "experts per generated token" in text.stdout and "majority:" in text.stdout
    for args, message in ((["--top-k", "2"], "--top-k and --expert apply to the document router"),
                          (["--layer", "99"], "--layer must be between 0 and"),):
        bad = run_cli(*base, "--router", "token", "--text", "x", *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
    doc_layer = run_cli(*base, "--text", "x", "--layer", "1")
    assert doc_layer.returncode == 2 and "--layer applies to --router token only" in doc_layer.stderr


def test_ask_token_without_a_token_router(trained_setup, tmp_path):
    import os

    from moe_experts.errors import MissingArtifactError
    from moe_experts.inference.ask import Request
    from moe_experts.inference.ask_token import ask_token
    from moe_experts.modeling.stages import Setup
    from moe_experts.workspace import Workspace

    bare = Workspace(tmp_path / "ws")
    bare.root.mkdir(parents=True)
    os.symlink(trained_setup.workspace.root / "models", bare.root / "models")
    other = Setup(workspace=bare, registry=trained_setup.registry, preset=trained_setup.preset)
    with pytest.raises(MissingArtifactError, match="train-router --kind token"):
        ask_token(other, [Request("hello")])


class _Interrupt(Exception):
    pass


def _copy_setup(setup, root):
    """A copy of ``setup``'s workspace with its experts but no router, checkpoints or reports."""
    import shutil

    from moe_experts.modeling.stages import Setup
    from moe_experts.workspace import Workspace

    shutil.copytree(setup.workspace.root, root, ignore=shutil.ignore_patterns("routers", "checkpoints", "reports"))
    return Setup(workspace=Workspace(root), registry=setup.registry, preset=setup.preset)


def test_interrupted_training_resumes_to_the_same_router(trained_setup, tmp_path):
    """Kill the run right after its first checkpoint; --resume ends where an uninterrupted run ends.

    The recipe also gives the gates their own learning rate (their own optimiser groups, restored on resume)
    and adds the router z-loss.
    """
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from moe_experts.modeling.stages import TrainOptions
    from moe_experts.modeling.train import RUN_RECORD

    save_steps = trained_setup.preset.save_steps
    recipe = TokenRouterRecipe.model_validate({**FAST, "dead_expert_share": 0.0, "train": "all",
                                               "gate_learning_rate_scale": 3.0, "router_z_loss_coef": 1e-3,
                                               "training": {**FAST["training"], "steps": 2 * save_steps}})

    class StopAt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == save_steps:
                raise _Interrupt  # like a kill right after the checkpoint was written

    straight = _copy_setup(trained_setup, tmp_path / "straight")
    train_token_router(straight, recipe)

    broken = _copy_setup(trained_setup, tmp_path / "broken")
    with pytest.raises(_Interrupt):
        train_token_router(broken, recipe, TrainOptions(callbacks=[StopAt()]))
    ckpts = broken.workspace.checkpoints_dir("token-router")
    assert (ckpts / RUN_RECORD).exists() and (ckpts / f"checkpoint-{save_steps}").is_dir()
    assert not token_router_dir(broken.workspace.root).exists()  # nothing half-written
    with pytest.raises(TrainingError, match="`resume`"):
        train_token_router(broken, recipe)

    # another recipe cannot pick up this run's optimiser state: named down to the field
    other = recipe.model_copy(update={"top_k": 1})
    with pytest.raises(TrainingError, match=r"recipe\.top_k: started from 2, now 1") as refused:
        train_token_router(broken, other, TrainOptions(resume=True))
    assert "`restart`" in refused.value.hint
    # the health check's settings are not part of training: changing them does not block the resume
    laxer = recipe.model_copy(update={"health_blocks_per_domain": 1})
    manifest = train_token_router(broken, laxer, TrainOptions(resume=True))

    assert manifest["training"]["resumed_from_step"] == save_steps
    assert manifest["training"]["steps"] == 2 * save_steps
    assert not ckpts.exists()  # finished: nothing left to resume
    a = load_file(token_router_dir(straight.workspace.root) / "model.safetensors")
    b = load_file(token_router_dir(broken.workspace.root) / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
