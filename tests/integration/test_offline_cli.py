"""Offline first, from the command line: `cards validate` names every hub id this machine cannot load offline,
`--strict` makes that an error, and `--online` / MOE_EXPERTS_ONLINE=1 is the one switch that allows downloads.

Each command runs in its own process with a private, empty HF_HOME and without HF_HUB_OFFLINE, as a user's would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.unit.test_offline import fake_hub_cache

HUB_ID = "some-org/some-model"


def run(*args: str, hf_home: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MOE_EXPERTS_ONLINE", "HF_HUB_CACHE",
                        "HF_DATASETS_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update({"PYTHONPATH": str(REPO), "HF_HOME": str(hf_home), "MOE_EXPERTS_NO_PROGRESS": "1", **(extra_env or {})})
    return subprocess.run([sys.executable, "-m", "moe_experts", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


@pytest.fixture
def cards(tmp_path: Path) -> Path:
    """The shipped cards, with law's model set to a hub id that no cache holds."""
    folder = tmp_path / "cards"
    folder.mkdir()
    for path in sorted((REPO / "experts").glob("*.yaml")):
        shutil.copy(path, folder / path.name)
    law = yaml.safe_load((folder / "law.yaml").read_text())
    law["model"] = HUB_ID
    (folder / "law.yaml").write_text(yaml.safe_dump(law, sort_keys=False))
    return folder


def test_validate_warns_about_an_uncached_hub_model_and_strict_fails(cards: Path, tmp_path: Path):
    hf_home = tmp_path / "hf"
    plain = run("--cards", str(cards), "cards", "validate", hf_home=hf_home)
    assert plain.returncode == 0, plain.stderr
    assert "ok: 4 cards" in plain.stdout
    warnings = [line for line in plain.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"card 'law': model '{HUB_ID}'" in warnings[0], plain.stderr
    assert "offline" in warnings[0] and str(hf_home / "hub") in warnings[0]
    assert f"hf download {HUB_ID}" in plain.stderr and "model: in card 'law'" in plain.stderr

    strict = run("--cards", str(cards), "cards", "validate", "--strict", hf_home=hf_home)
    assert strict.returncode == 5, strict.stderr  # a missing checkpoint (README, Exit codes)
    assert f"card 'law': model '{HUB_ID}'" in strict.stderr and "--strict" in strict.stderr

    one = run("cards", "validate", "--strict", str(cards / "law.yaml"), hf_home=hf_home)  # files named on the line too
    assert one.returncode == 5 and f"card 'law': model '{HUB_ID}'" in one.stderr


def test_validate_is_quiet_once_the_model_is_in_the_cache(cards: Path, tmp_path: Path):
    hf_home = tmp_path / "hf"
    fake_hub_cache(hf_home / "hub", HUB_ID, {"config.json": "{}"})
    result = run("--cards", str(cards), "cards", "validate", "--strict", hf_home=hf_home)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr


def test_validate_reports_an_uncached_hub_dataset(cards: Path, tmp_path: Path):
    general = yaml.safe_load((cards / "general.yaml").read_text())
    general["corpus"]["sources"].append({"kind": "hf_dataset", "name": "some-org/some-corpus"})
    (cards / "general.yaml").write_text(yaml.safe_dump(general, sort_keys=False))
    law = yaml.safe_load((cards / "law.yaml").read_text())
    law["model"] = "starter"
    (cards / "law.yaml").write_text(yaml.safe_dump(law, sort_keys=False))
    result = run("--cards", str(cards), "cards", "validate", "--strict", hf_home=tmp_path / "hf")
    assert result.returncode == 3, result.stderr  # a missing corpus source
    assert "card 'general': corpus source 'hf_dataset': dataset 'some-org/some-corpus'" in result.stderr
    assert "hf download some-org/some-corpus --repo-type dataset" in result.stderr


def test_online_is_one_switch_set_by_the_flag_or_the_environment(cards: Path, tmp_path: Path):
    hf_home = tmp_path / "hf"
    offline = run("--cards", str(cards), "cards", "validate", hf_home=hf_home)
    flag = run("--online", "--cards", str(cards), "cards", "validate", hf_home=hf_home)
    env = run("--cards", str(cards), "cards", "validate", hf_home=hf_home, extra_env={"MOE_EXPERTS_ONLINE": "1"})
    blocked = run("--online", "--cards", str(cards), "cards", "validate", hf_home=hf_home,
                  extra_env={"HF_HUB_OFFLINE": "1"})
    assert "this run is offline" in offline.stderr
    assert "downloads are on" in flag.stderr and "downloads are on" in env.stderr
    assert "HF_HUB_OFFLINE" in blocked.stderr and "downloads are on" not in blocked.stderr


def test_a_command_that_loads_the_model_fails_at_once_with_the_fix(cards: Path, tmp_path: Path):
    """`sanity` loads every expert first: the hub id fails from the cache check, not after network retries."""
    result = run("--preset", "micro", "--cards", str(cards), "-w", str(tmp_path / "ws"), "sanity",
                 hf_home=tmp_path / "hf")
    assert result.returncode == 5, result.stderr
    assert f"model '{HUB_ID}' is not a local folder and not in the local Hugging Face cache" in result.stderr
    assert f"hf download {HUB_ID}" in result.stderr and "MOE_EXPERTS_ONLINE=1" in result.stderr
