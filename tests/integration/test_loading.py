"""Experts that are not starters: a local checkpoint folder or a Hugging Face id in the card."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_experts.config import ModelSource
from moe_experts.errors import CheckpointError
from moe_experts.modeling.checkpoints import load_pretrained
from tests.conftest import save_user_model


@pytest.fixture(scope="module")
def local_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A causal LM saved the way any user's fine-tuned expert would be (plain save_pretrained)."""
    return save_user_model(tmp_path_factory.mktemp("user-expert"), ["the patient has a fever"] * 20)


def test_local_path_loads_and_generates(local_checkpoint: Path):
    loaded = load_pretrained(ModelSource.model_validate(str(local_checkpoint)))
    assert loaded.manifest is None  # not built by this project: no hash manifest to check
    assert loaded.tokenizer.pad_token_id is not None  # filled in from eos for batching
    x = loaded.tokenizer("the patient", return_tensors="pt")["input_ids"]
    out = loaded.model.generate(x, max_new_tokens=5, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    assert out.shape[1] == x.shape[1] + 5


def test_unreachable_hub_id_is_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(ModelSource.model_validate("some-org/not-cached-model"))
    message = str(err.value)
    assert "some-org/not-cached-model" in message
    assert "local folder" in message  # the fix: point the card at a folder
    assert "hf download some-org/not-cached-model" in message  # or fetch it where the hub is reachable


def test_folder_that_is_not_a_model(tmp_path: Path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot load"):
        load_pretrained(ModelSource.model_validate(str(tmp_path)))
