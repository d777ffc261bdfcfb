"""The public Python API: the README's example, run as written on a micro workspace."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap

from tests.conftest import REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(routed, tmp_path):
    """The README's code, with the tiny preset's names swapped for the test's micro workspace, runs and prints.

    Both evaluations score 5 documents a domain, not 20 and 50: the micro test splits hold at most about 15, so the
    two reports scored the same documents twice, and scoring every system was most of this test's time.
    """
    setup, _, recipe_path = routed
    ws = tmp_path / "ws"
    shutil.copytree(setup.workspace.root, ws, ignore=shutil.ignore_patterns("checkpoints"))
    code = readme_example()
    swaps = {
        'MoE.open(cards="experts", preset="tiny")':
            f'MoE.open(cards={str(setup.registry.source_dir)!r}, preset="micro", workspace={str(ws)!r})',
        "moe.build()": f"moe.build(doc_router={str(recipe_path)!r}, eval_max_docs=5)",
        "moe.evaluate(max_docs=50,": "moe.evaluate(max_docs=5,",
    }
    for old, new in swaps.items():
        assert old in code, f"the README example no longer contains {old!r}: update this test with it"
        code = code.replace(old, new)
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent(code))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={"MOE_EXPERTS_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                              "PYTHONPATH": str(REPO),
                              "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    built = eval(lines[0])  # noqa: S307 - our own print of a list of stage names
    assert "evaluation report" in built  # no other test writes a report of max_docs=5: a new one
    assert not [s for s in built if s in {"corpora", "tokenizer", "seed", "generalist", "document router"}
                or s.startswith("expert ")], built  # every model and the router were current: built by the fixtures
    expert, posterior = lines[1].split()[:2]
    assert expert in {"code", "general", "law", "medicine"} and 0 < float(posterior) <= 1
    assert lines[2].split()[0] in {"code", "general", "law", "medicine"}
    assert str(ws / "reports") in lines[3] and "'law'" in lines[3]
    assert lines[4].startswith("[('code', ")


def test_import_is_light():
    code = ("import sys, moe_experts; from moe_experts import MoE, Report, RoutingDecision; "
            "heavy = [m for m in ('torch', 'transformers', 'faiss', 'sentence_transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)



def test_train_router_reuses_a_current_router_and_refuses_unknown_kinds(routed, tmp_path):
    import pytest

    from moe_experts import MoE
    from moe_experts.errors import ConfigError

    setup, manifest, recipe_path = routed
    ws = tmp_path / "ws"
    shutil.copytree(setup.workspace.root, ws, ignore=shutil.ignore_patterns("checkpoints"))
    moe = MoE.open(cards=setup.registry.source_dir, preset="micro", workspace=ws)
    info = moe.train_router("doc", recipe=recipe_path)
    assert (info.kind, info.trained, info.folder) == ("doc", False, ws / "routers" / "doc")
    assert info.manifest["recipe_fingerprint"] == manifest["recipe_fingerprint"]
    with pytest.raises(ConfigError, match="unknown router kind 'sparse'"):
        moe.train_router("sparse")
