"""Every failure the README's exit-code table documents, run through the command line's entry point.

The table is read from README.md, so a code added there without a case here (or the reverse) fails.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, card


def documented_codes() -> dict[int, str]:
    text = (REPO / "README.md").read_text(encoding="utf-8").split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m.group(1)): m.group(2).strip() for m in re.finditer(r"^\| (\d+) \| (.+?) \|$", text, re.M)}


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``moe-experts ARGS`` in this process (the same exit-code mapping as the console script); (code, stderr)."""
    from moe_experts.cli.app import main

    monkeypatch.setattr(sys, "argv", ["moe-experts", *args])
    with pytest.raises(SystemExit) as info:
        main()
        raise SystemExit(0)
    return int(info.value.code or 0), capsys.readouterr().err


@dataclass(frozen=True)
class Case:
    code: int
    what: str
    expect: str  # a fragment of the error message


@pytest.fixture
def ws_copy(routed, tmp_path):
    setup, _, recipe = routed
    ws = tmp_path / "ws"
    shutil.copytree(setup.workspace.root, ws)
    base = ["--preset", "micro", "--cards", setup.registry.source_dir, "-w", str(ws)]
    return setup, ws, base, recipe


def _bad_flag(ctx):
    _, _, base, _ = ctx
    return [*base, "eval", "--max-docs", "0"]


def _corpus_build(ctx, tmp_path):
    cards = tmp_path / "thin"
    cards.mkdir()
    for name, fallback in (("code", False), ("general", True)):
        data = card(name, [{"kind": "python_stdlib", "limit": 2}], fallback=fallback, min_documents=10_000)
        (cards / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return ["--preset", "micro", "--cards", str(cards), "-w", str(tmp_path / "thin-ws"), "data", "build"]


def _workspace(ctx):
    setup, ws, _, _ = ctx
    return ["--preset", "tiny", "--cards", setup.registry.source_dir, "-w", str(ws), "data", "show"]


def _corrupted(ctx):
    from moe_experts.routing.doc_router import live_dir

    _, ws, base, _ = ctx
    path = live_dir(ws / "routers" / "doc") / "classifier.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    return [*base, "eval", "--max-docs", "2", "--no-suites", "--no-timing", "--systems", "doc-top1"]


def _interrupted_run(ctx):
    _, ws, base, _ = ctx
    (ws / "checkpoints" / "seed" / "checkpoint-1").mkdir(parents=True)
    return [*base, "train", "seed", "--force"]


def _sanity(ctx):
    _, ws, base, _ = ctx
    shutil.rmtree(ws / "models" / "law")
    shutil.copytree(ws / "models" / "seed", ws / "models" / "law")  # an "expert" no better than its seed
    return [*base, "sanity", "--strict"]


CASES = {
    2: (Case(2, "a bad flag", "--max-docs"), _bad_flag),
    3: (Case(3, "a corpus under its minimum", "under its minimum"), _corpus_build),
    4: (Case(4, "a workspace of another preset", "was created for preset 'micro'"), _workspace),
    5: (Case(5, "a corrupted router file", "classifier.safetensors does not match"), _corrupted),
    6: (Case(6, "an interrupted run without --resume or --restart", "--resume"), _interrupted_run),
    7: (Case(7, "sanity --strict with an expert that does not beat its seed", "law"), _sanity),
}


def test_the_table_and_these_cases_agree():
    assert set(documented_codes()) == {*CASES, 130}


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_documented_failure_exits_with_its_code(code, ws_copy, tmp_path, monkeypatch, capsys):
    case, build = CASES[code]
    args = build(ws_copy, tmp_path) if build is _corpus_build else build(ws_copy)
    got, err = run_main(monkeypatch, capsys, *args)
    assert got == case.code, f"{case.what}: exit {got}\n{err}"
    assert case.expect in err, err
    assert "Traceback" not in err


def test_an_interrupt_exits_130(monkeypatch, capsys):
    import moe_experts.cli.app as app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(app.cli, "main", interrupted)
    got, err = run_main(monkeypatch, capsys, "data", "show")
    assert got == 130 and "interrupted" in err
