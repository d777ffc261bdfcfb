"""Library errors name settings; the command line shows them as its flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_experts.cli.app import as_flags
from moe_experts.errors import TrainingError


def test_settings_in_backticks_become_flags_and_commands_stay():
    error = TrainingError("an interrupted run left checkpoints",
                          hint="set `resume` to continue it, or `restart`; `top_k` 1; run `moe-experts quickstart`")
    shown = as_flags(str(error))
    assert "set --resume to continue it, or --restart; --top-k 1" in shown
    assert "`moe-experts quickstart`" in shown  # a command is not a setting
    assert as_flags("`max_epochs` in the preset") == "`max_epochs` in the preset"  # no such flag: left as named


def test_library_messages_name_no_flag():
    """What a Python caller reads: the keyword, not the CLI's spelling of it."""
    from moe_experts.modeling.train import prepare_checkpoint_dir

    with pytest.raises(TrainingError) as caught:
        prepare_checkpoint_dir(Path("/nonexistent"), what="x", resume=True, restart=True)
    assert "`resume` and `restart`" in str(caught.value) and "--" not in str(caught.value)
