"""The command line end to end on the micro preset, and its answers to bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli_in_process, write_test_cards


# the router learns from a small sample here: embedding is the slow part on CPU
SMALL_RECIPE = {"max_train_documents_per_domain": 40, "max_val_documents_per_domain": 16}


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, stdin: str | bytes | None = None,
            text: bool = True, fresh_process: bool = False):
    """``moe-experts ARGS``: through ``main()`` in this process, or in a ``python -m moe_experts`` of its own.

    ``text=False`` gives stdout and stderr as bytes, as a pipe does.
    """
    if not fresh_process:
        return run_cli_in_process(*args, cwd=cwd, env=env, stdin=stdin, text=text)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "MOE_EXPERTS_NO_PROGRESS": "1", **(env or {})}
    data = stdin.encode() if isinstance(stdin, str) and not text else stdin
    return subprocess.run(
        [sys.executable, "-m", "moe_experts", *args], input=data,
        capture_output=True, text=text, cwd=cwd or REPO, env=full_env, timeout=600,
    )


@pytest.fixture(scope="module")
def cli_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Cards and a workspace on which `quickstart` ran once through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    cards = write_test_cards(root / "cards")
    ws = root / "ws"
    (root / "doc.yaml").write_text(yaml.safe_dump(SMALL_RECIPE))
    # the quickstart as users run it: a process of its own (most other CLI tests call main() in this one)
    result = run_cli("--preset", "micro", "--cards", str(cards), "-w", str(ws), "quickstart", "--recipe", str(root / "doc.yaml"),
                     fresh_process=True)
    assert result.returncode == 0, result.stderr
    return cards, ws


def test_the_in_process_runner_answers_as_a_process_does(tmp_path: Path):
    """Most CLI tests run ``main()`` in the test process (``run_cli``); here it and ``python -m moe_experts`` agree."""
    args = ("--preset", "micro", "-w", str(tmp_path / "missing"), "ask", "--text", "hello")
    inside, outside = run_cli(*args), run_cli(*args, fresh_process=True)
    assert inside.returncode == outside.returncode == 4
    assert inside.stderr == outside.stderr and f"no workspace at {tmp_path / 'missing'}" in inside.stderr
    assert inside.stdout == outside.stdout == ""
    refused = run_cli("cards", "list", env={"MOE_EXPERTS_CARDS": str(tmp_path / "no-such-folder")})
    plain = run_cli("cards", "list", env={"MOE_EXPERTS_CARDS": str(tmp_path / "no-such-folder")}, fresh_process=True)
    assert refused.returncode == plain.returncode != 0 and refused.stderr == plain.stderr
    assert os.environ.get("MOE_EXPERTS_CARDS") is None  # the command's environment ended with it


def test_help_is_light():
    """--help must not import torch, transformers or faiss (it is what makes it instant)."""
    code = (
        "import sys; from moe_experts.cli import cli; from click.testing import CliRunner;"
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output;"
        "print(sorted(m for m in ('torch', 'transformers', 'faiss', 'sentence_transformers', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


HEAVY = ("torch", "transformers", "faiss", "sentence_transformers", "numpy", "moe_experts.config", "moe_experts.pipeline")


def test_import_and_every_help_are_light():
    """Importing the CLI, and --help of every command, loads none of the heavy libraries nor the library's config."""
    code = (
        "import sys, click; import moe_experts.cli; from moe_experts.cli import cli; from click.testing import CliRunner;"
        f"heavy = {HEAVY!r}; assert not [m for m in heavy if m in sys.modules], 'on import';"
        "paths = [[]] + [[n] for n in cli.commands]"
        " + [[n, s] for n, c in cli.commands.items() if isinstance(c, click.Group) for s in c.commands];"
        "outs = [CliRunner().invoke(cli, [*p, '--help']) for p in paths];"
        "assert all(r.exit_code == 0 for r in outs), [r.output for r in outs if r.exit_code];"
        "print(len(paths), sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(maxsplit=1)[1].strip() == "[]" and int(out.stdout.split()[0]) > 10


# A router kind added the documented way: one class, one registry entry, and nothing in the CLI.
_FAKE_KIND = """
from typing import Literal
from moe_experts.config import StrictModel
from moe_experts.routing.kinds import ROUTER_KINDS, RouterKind, RouterStatus

class FakeRecipe(StrictModel):
    kind: Literal["fake"] = "fake"

class FakeKind(RouterKind):
    name, title, summary, default_recipe_file = "fake", "fake router", "a kind the test registered", "fake.yaml"
    recipe_model = FakeRecipe
    def folder(self, root):
        return root / "routers" / "fake"
    def status(self, setup, recipe):
        return RouterStatus("missing")
    def train(self, setup, recipe, opts):
        print("trained", recipe.kind)
        return {"name": "fake"}

ROUTER_KINDS["fake"] = FakeKind()
"""


def test_train_router_kinds_come_from_the_registry(tmp_path: Path):
    from moe_experts.routing.kinds import ROUTER_KINDS

    cards = write_test_cards(tmp_path / "cards")
    code = _FAKE_KIND + f"""
import json, moe_experts.pipeline
from click.testing import CliRunner
from moe_experts.cli import cli
moe_experts.pipeline.missing_prerequisites = lambda setup: []  # the fake kind needs no experts
kind = next(p for p in cli.commands["train-router"].params if p.name == "kind")
print(json.dumps(list(kind.type.choices)))
print(" ".join(CliRunner().invoke(cli, ["train-router", "--help"]).output.split()))
run = CliRunner().invoke(cli, ["--preset", "micro", "--cards", {str(cards)!r}, "-w", {str(tmp_path / "ws")!r},
                               "train-router", "--kind", "fake"], catch_exceptions=False)
print(run.exit_code)
print(run.output)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    choices, help_text, exit_code, *output = out.stdout.splitlines()
    assert json.loads(choices) == [*ROUTER_KINDS, "fake"]
    assert "--kind [doc|token|fake]" in help_text and "fake: a kind the test registered" in help_text
    assert exit_code == "0" and "trained fake" in output and f"fake router: {tmp_path / 'ws' / 'routers' / 'fake'}" in output


def test_quickstart_end_to_end(cli_workspace):
    cards, ws = cli_workspace
    for name in ("seed", "code", "general", "law", "medicine", "generalist"):
        assert (ws / "models" / name / "model.safetensors").exists()
        assert (ws / "models" / name / "tokenizer.json").exists()
    assert (ws / "reports" / "sanity" / "sanity.json").exists()
    from moe_experts.routing.doc_router import live_dir

    live = live_dir(ws / "routers" / "doc")
    assert (live / "router.json").exists() and (live / "index.faiss").exists()
    reports = [p.parent for p in (ws / "reports").glob("*/report.json")]
    assert len(reports) == 1 and (reports[0] / "report.html").exists()  # quickstart ends with the report
    assert not list(ws.rglob(".tmp-*"))  # nothing half-written
    assert not (ws / "checkpoints").exists() or not any((ws / "checkpoints").iterdir())


def test_second_quickstart_reuses_everything(cli_workspace):
    cards, ws = cli_workspace
    recipe = ws.parent / "doc.yaml"
    result = run_cli("--preset", "micro", "--cards", str(cards), "-w", str(ws), "quickstart", "--recipe", str(recipe))
    assert result.returncode == 0, result.stderr
    status = [line.split()[-1] for line in result.stdout.splitlines() if line.split()[-1:] in (["built"], ["reused"])]
    assert status and set(status) == {"reused"}
    assert "validation perplexity" in result.stdout
    assert "Headline: bits per byte" in result.stdout and "report: " in result.stdout  # the same report, reused
    assert len(list((ws / "reports").glob("*/report.json"))) == 1


def test_data_show_and_sanity(cli_workspace):
    cards, ws = cli_workspace
    shown = run_cli("--preset", "micro", "--cards", str(cards), "-w", str(ws), "data", "show")
    assert shown.returncode == 0, shown.stderr
    assert all(d in shown.stdout for d in ("code", "general", "law", "medicine"))
    checked = run_cli("--preset", "micro", "--cards", str(cards), "-w", str(ws), "sanity")
    assert checked.returncode == 0
    assert "seed" in checked.stdout and "generalist" in checked.stdout


def test_cards_commands():
    listed = run_cli("cards", "list")
    assert listed.returncode == 0 and "(fallback)" in listed.stdout
    validated = run_cli("cards", "validate")
    assert validated.returncode == 0 and "4 cards" in validated.stdout


def test_broken_card_exit_code_and_message(tmp_path: Path):
    cards = write_test_cards(tmp_path / "cards")
    data = yaml.safe_load((cards / "law.yaml").read_text())
    data["corpus"]["min_documents"] = -5
    (cards / "law.yaml").write_text(yaml.safe_dump(data))
    result = run_cli("--preset", "micro", "--cards", str(cards), "-w", str(tmp_path / "ws"), "data", "build")
    assert result.returncode == 2
    assert "law.yaml" in result.stderr and "corpus.min_documents" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_domain(cli_workspace):
    cards, ws = cli_workspace
    result = run_cli("--preset", "micro", "--cards", str(cards), "-w", str(ws), "train", "experts", "--domains", "finance")
    assert result.returncode == 2
    assert "unknown domain 'finance'" in result.stderr and "Traceback" not in result.stderr


def test_missing_source_names_it_and_fails_when_domain_too_small(tmp_path: Path):
    cards = write_test_cards(tmp_path / "cards")
    data = yaml.safe_load((cards / "general.yaml").read_text())
    data["corpus"]["sources"] = [{"kind": "local", "path": str(tmp_path / "nowhere" / "*.txt")}]
    (cards / "general.yaml").write_text(yaml.safe_dump(data))
    ws = tmp_path / "ws"
    result = run_cli("--preset", "micro", "--cards", str(cards), "-w", str(ws), "data", "build")
    assert result.returncode == 3
    assert "domain 'general' has 0 documents" in result.stderr
    assert "local" in result.stderr and "nowhere" in result.stderr
    assert not (ws / "corpora").exists()  # nothing half-written


def test_unwritable_workspace(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("--preset", "micro", "-w", str(blocker / "ws"), "data", "build")
    assert result.returncode == 4
    assert "cannot create workspace" in result.stderr and "Traceback" not in result.stderr


def test_workspace_of_another_preset(cli_workspace):
    cards, ws = cli_workspace
    result = run_cli("--preset", "tiny", "--cards", str(cards), "-w", str(ws), "data", "show")
    assert result.returncode == 4
    assert "created for preset 'micro'" in result.stderr


def test_corrupted_checkpoint_exit_code(cli_workspace, tmp_path: Path):
    cards, ws = cli_workspace
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    weights = copy / "models" / "law" / "model.safetensors"
    weights.write_bytes(b"\0" * 100)
    result = run_cli("--preset", "micro", "--cards", str(cards), "-w", str(copy), "train", "experts", "-d", "law")
    assert result.returncode == 5
    assert "corrupted" in result.stderr and "--force" in result.stderr


def test_interrupted_run_needs_resume_or_restart(cli_workspace, tmp_path: Path):
    cards, ws = cli_workspace
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    shutil.rmtree(copy / "models" / "generalist")
    (copy / "checkpoints" / "generalist" / "checkpoint-4").mkdir(parents=True)
    result = run_cli("--preset", "micro", "--cards", str(cards), "-w", str(copy), "train", "generalist")
    assert result.returncode == 6
    assert "--resume" in result.stderr and "--restart" in result.stderr


def test_torchrun_two_processes_train_one_model(cli_workspace, tmp_path: Path):
    """The multi-GPU path, on two CPU processes (gloo): one model, trained on twice the tokens."""
    cards, ws = cli_workspace
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy, ignore=shutil.ignore_patterns("models", "reports"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MOE_EXPERTS_NO_PROGRESS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "moe_experts",
         "--preset", "micro", "--cards", str(cards), "-w", str(copy), "train", "seed"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("seed: trained") == 1  # rank 1 stays quiet
    manifest = json.loads((copy / "models" / "seed" / "moe_experts.json").read_text())
    preset = yaml.safe_load((REPO / "moe_experts" / "presets" / "micro.yaml").read_text())
    steps = preset["seed_phase"]["steps"]
    assert manifest["training"]["steps"] == steps
    assert manifest["training"]["tokens"] == steps * preset["seq_len"] * preset["batch_size"] * 2
