"""One reference to an expert: the one loader and the one weights id every layer uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_experts.config import ModelSource, load_preset, load_registry
from moe_experts.modeling import stages
from moe_experts.modeling.checkpoints import weights_id
from moe_experts.modeling.stages import Setup, expert_weights_id, load_expert
from moe_experts.workspace import MANIFEST, Workspace, write_json_atomic
from tests.conftest import REPO

A, B = "a" * 64, "b" * 64


def test_weights_id_of_one_file_is_its_short_hash_as_recorded_before():
    # workspaces built before the id moved here recorded this as their parent: they must stay current
    assert weights_id({"weights_sha256": {"model.safetensors": A}}) == A[:16]


def test_weights_id_of_sharded_weights_changes_with_any_shard():
    one = weights_id({"weights_sha256": {"model-00001.safetensors": A, "model-00002.safetensors": B}})
    other = weights_id({"weights_sha256": {"model-00001.safetensors": A, "model-00002.safetensors": A}})
    assert len(one) == 16 and one != other and one != A[:16]


@pytest.fixture()
def setup(tmp_path) -> Setup:
    """The shipped cards, with 'law' turned into a user's pretrained model; 'medicine' saved in the workspace."""
    registry = load_registry(REPO / "experts")
    cards = [c.model_copy(update={"model": ModelSource(kind="pretrained", name_or_path=str(tmp_path / "my-law"),
                                                        revision="v2")}) if c.name == "law" else c
             for c in registry.cards]
    ws = Workspace(tmp_path / "ws")
    write_json_atomic(ws.model_dir("medicine") / MANIFEST, {"weights_sha256": {"model.safetensors": B}})
    return Setup(workspace=ws, registry=registry.model_copy(update={"cards": cards}), preset=load_preset("micro"))


def test_weights_id_names_a_pretrained_card_by_source_and_a_checkpoint_by_hash(setup):
    assert expert_weights_id(setup, "law") == f"{setup.workspace.root.parent / 'my-law'}@v2"
    assert expert_weights_id(setup, "medicine") == B[:16]


def test_load_expert_takes_a_cards_pretrained_model_else_the_workspace_checkpoint(setup, monkeypatch):
    calls = []
    monkeypatch.setattr(stages, "load_pretrained", lambda source, device, **_: calls.append(("pretrained", source.name_or_path, device)))
    monkeypatch.setattr(stages, "load_checkpoint", lambda folder, device: calls.append(("checkpoint", Path(folder), device)))
    load_expert(setup, "law", "cuda")
    load_expert(setup, "medicine")
    load_expert(setup, "seed")  # not a card: the seed, the generalists load from the workspace too
    ws = setup.workspace
    assert calls == [("pretrained", str(ws.root.parent / "my-law"), "cuda"),
                     ("checkpoint", ws.model_dir("medicine"), "cpu"), ("checkpoint", ws.model_dir("seed"), "cpu")]
