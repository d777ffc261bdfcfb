"""Workspace: atomic artifacts, preset binding, unwritable folders, stale inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moe_experts.errors import StaleArtifactError, WorkspaceError
from moe_experts.workspace import Workspace, atomic_dir, check_inputs, resolve_workspace


def test_atomic_dir_replaces_only_on_success(tmp_path: Path):
    target = tmp_path / "artifact"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    assert (target / "v").read_text() == "1"

    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError("crash mid-write")
    assert (target / "v").read_text() == "1"  # the old artifact survives whole
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # no temporary left behind


def test_interrupted_build_leftovers_are_cleaned(tmp_path: Path):
    ws = Workspace(tmp_path / "ws")
    ws.open("micro", "abc")
    dead = ws.root / "models" / ".tmp-seed-999999"  # a pid that does not exist
    dead.mkdir(parents=True)
    alive = ws.root / "models" / f".tmp-law-{os.getpid()}"
    alive.mkdir()
    assert len(ws.clean_stale_temporaries()) == 1
    assert not dead.exists() and alive.exists()


def test_workspace_is_bound_to_its_preset(tmp_path: Path):
    ws = Workspace(tmp_path / "ws")
    ws.open("tiny", "f1")
    ws.open("tiny", "f1")
    with pytest.raises(WorkspaceError, match="created for preset 'tiny'"):
        ws.open("small", "f2")
    with pytest.raises(WorkspaceError, match="changed since"):
        ws.open("tiny", "f3")


def test_unwritable_workspace_is_one_clear_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(WorkspaceError, match="cannot create workspace") as err:
        Workspace(blocker / "ws").open("tiny", "f")
    assert "`workspace`" in str(err.value)


def test_default_workspace_follows_preset_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MOE_EXPERTS_WORKSPACE", raising=False)
    assert resolve_workspace(None, "tiny").root == Path("runs/tiny").absolute()
    monkeypatch.setenv("MOE_EXPERTS_WORKSPACE", str(tmp_path / "x"))
    assert resolve_workspace(None, "tiny").root == tmp_path / "x"
    assert resolve_workspace(str(tmp_path / "y"), "tiny").root == tmp_path / "y"


def test_stale_inputs_name_every_difference():
    with pytest.raises(StaleArtifactError) as err:
        check_inputs("model 'law'", {"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}, rebuild_hint="--force")
    assert "b: built from 2" in str(err.value) and "c: built from None" in str(err.value)
    check_inputs("x", {"a": 1}, {"a": 1}, rebuild_hint="")
