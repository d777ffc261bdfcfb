"""What an interrupted training run leaves behind, and when it may be resumed."""

from __future__ import annotations

import json
import logging

import pytest

from moe_experts.errors import TrainingError
from moe_experts.modeling.train import RUN_RECORD, prepare_checkpoint_dir

INPUTS = {"corpus_hash": "abc", "recipe": {"top_k": 2, "training": {"steps": 100, "learning_rate": 0.001}}}


def _interrupted(tmp_path, inputs=INPUTS):
    folder = tmp_path / "ckpt"
    assert prepare_checkpoint_dir(folder, what="stage", resume=False, restart=False, inputs=inputs) is None
    (folder / "checkpoint-50").mkdir()
    (folder / "checkpoint-100").mkdir()
    return folder


def test_a_fresh_run_records_its_inputs(tmp_path):
    folder = _interrupted(tmp_path)
    assert json.loads((folder / RUN_RECORD).read_text()) == INPUTS


def test_resume_with_the_same_inputs_takes_the_latest_checkpoint(tmp_path):
    folder = _interrupted(tmp_path)
    same = json.loads(json.dumps(INPUTS))
    assert prepare_checkpoint_dir(folder, what="stage", resume=True, restart=False, inputs=same).name == "checkpoint-100"


def test_resume_with_other_inputs_names_each_changed_field(tmp_path):
    folder = _interrupted(tmp_path)
    other = {"corpus_hash": "abc", "recipe": {"top_k": 1, "training": {"steps": 100, "learning_rate": 0.01}}}
    with pytest.raises(TrainingError) as err:
        prepare_checkpoint_dir(folder, what="stage", resume=True, restart=False, inputs=other)
    message = str(err.value)
    assert "recipe.top_k: started from 2, now 1" in message
    assert "recipe.training.learning_rate: started from 0.001, now 0.01" in message
    assert "steps" not in message and "corpus_hash" not in message
    assert "`restart`" in err.value.hint
    assert (folder / "checkpoint-100").is_dir()  # refused, not touched


def test_an_added_input_is_a_difference(tmp_path):
    folder = _interrupted(tmp_path)
    with pytest.raises(TrainingError, match="include_seed: started from None, now True"):
        prepare_checkpoint_dir(folder, what="stage", resume=True, restart=False, inputs={**INPUTS, "include_seed": True})


def test_restart_discards_and_records_the_new_inputs(tmp_path):
    folder = _interrupted(tmp_path)
    new = {**INPUTS, "corpus_hash": "def"}
    assert prepare_checkpoint_dir(folder, what="stage", resume=False, restart=True, inputs=new) is None
    assert not (folder / "checkpoint-100").exists()
    assert json.loads((folder / RUN_RECORD).read_text()) == new


def test_a_checkpoint_without_a_record_resumes_with_a_warning(tmp_path, caplog):
    folder = _interrupted(tmp_path)
    (folder / RUN_RECORD).unlink()
    with caplog.at_level(logging.WARNING):
        got = prepare_checkpoint_dir(folder, what="stage", resume=True, restart=False, inputs=INPUTS)
    assert got.name == "checkpoint-100" and "records no inputs" in caplog.text


def test_interrupted_run_needs_a_decision(tmp_path):
    folder = _interrupted(tmp_path)
    with pytest.raises(TrainingError, match="interrupted run") as err:
        prepare_checkpoint_dir(folder, what="stage", resume=False, restart=False, inputs=INPUTS)
    assert "`resume`" in err.value.hint and "`restart`" in err.value.hint
    with pytest.raises(TrainingError, match="contradict"):
        prepare_checkpoint_dir(folder, what="stage", resume=True, restart=True, inputs=INPUTS)
