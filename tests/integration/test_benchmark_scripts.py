"""The benchmarks that read a workspace's published artifacts run against a trained micro workspace.

They are scripts, not library code, so nothing else exercises their way of reaching a router's files; both
once read a router's files from the folder a version is published under instead of the live version.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(script: str, *args: str) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_gate_training_reports_throughput_of_the_published_router(routed, cards_dir, tmp_path):
    setup, _, _ = routed
    out = tmp_path / "gate.json"
    token_home = setup.workspace.root / "routers" / "token"
    before = sorted(p.name for p in token_home.iterdir()) if token_home.exists() else None
    run_benchmark("gate_training.py", "-w", str(setup.workspace.root), "--cards", str(cards_dir),
                  "--steps", "2", "--train", "gates", "--out", str(out))
    result = json.loads(out.read_text())
    assert (result["preset"], result["train"], result["steps"]) == ("micro", "gates", 2)
    assert result["tokens"] == 2 * setup.preset.batch_size * setup.preset.seq_len
    assert result["active_parameters"] > 0 and 0 < result["mfu"] < 1
    after = sorted(p.name for p in token_home.iterdir()) if token_home.exists() else None
    assert after == before  # it trains in a scratch copy: the workspace's own token router is untouched


def test_routing_accuracy_reads_the_live_router_documents(routed, cards_dir, tmp_path):
    setup, _, _ = routed
    out = tmp_path / "accuracy.json"
    run_benchmark("routing_accuracy.py", "-w", str(setup.workspace.root), "--cards", str(cards_dir),
                  "--max-test-per-domain", "4", "--out", str(out))
    result = json.loads(out.read_text())
    from moe_experts.routing.doc_router import DOCUMENTS, live_dir, router_dir

    indexed = (live_dir(router_dir(setup.workspace.root)) / DOCUMENTS).read_text().splitlines()
    assert result["train_documents"] == len(indexed) > 0  # the baseline learns from what the router indexed
    assert 0 < result["test_documents"] <= 4 * len(result["experts"])  # at most 4 a domain, as asked
    for block in ("router_top1", "tfidf_logreg_baseline"):
        assert sum(map(sum, result[block]["confusion"])) == result["test_documents"]
        assert 0 <= result[block]["accuracy"] <= 1
