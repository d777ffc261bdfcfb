"""`moe-experts eval` and `eval compare`, end to end on the micro workspace with its router."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from moe_experts.errors import ConfigError, DataError
from tests.conftest import run_cli_in_process

PNG = b"\x89PNG\r\n\x1a\n"


def eval_cli(setup, *args: str):
    """``moe-experts eval ARGS`` on the module's workspace, through ``main()`` in this process."""
    return run_cli_in_process("--preset", "micro", "--cards", setup.registry.source_dir, "-w", str(setup.workspace.root),
                              "eval", *args)


@pytest.fixture(scope="module")
def first_report(routed):
    setup, _, _ = routed
    out = eval_cli(setup, "--max-docs", "6", "--resamples", "200", "--name", "first")
    assert out.returncode == 0, out.stderr
    return setup, out, setup.workspace.reports_dir / "first"


def test_report_files_and_schema(first_report):
    from moe_experts.evaluation.report import validate

    setup, out, folder = first_report
    report = json.loads((folder / "report.json").read_text())
    validate(report)
    names = [s["name"] for s in report["systems"]]
    # the shared micro workspace has a token-level MoE only if test_token_router ran first
    moe = ["token-moe"] if report["inputs"]["routers"]["token"] else []
    assert names == ["generalist", "seed", *[f"expert:{n}" for n in setup.registry.names], "doc-top1", "doc-top2",
                     *moe, "oracle"]
    assert {s["name"] for s in report["skipped"]} == {"generalist-params", *({"token-moe"} - set(moe))}
    assert all(s["hint"] for s in report["skipped"])
    assert "steering, doc-top1: the instruction changed the host expert's posterior by" in (folder / "report.md").read_text()
    for key, name in report["files"]["plots"].items():
        data = (folder / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000, key
    assert {"bits_per_byte", "reliability", "tradeoff"} <= set(report["files"]["plots"])
    md = (folder / "report.md").read_text()
    assert "Bits per byte on the test split" in md and "Routing suites" in md
    # one training run's targets say which run, and how to judge a recipe over seeds
    seed = setup.preset.seed
    assert report["training_seed"] == seed and f"### Targets (training seed {seed})" in md
    assert any(f"judged on one training run (training seed {seed})" in n and "eval spread" in n for n in report["notes"])
    assert f"met by this training run (training seed {seed})" in out.stdout
    html = (folder / "report.html").read_text()
    assert f"met, training seed {seed})</h2>" in html
    assert "data:image/png;base64," in html and 'src="http' not in html
    assert "Headline" in out.stdout and f"report: {folder}/report.md" in out.stdout
    assert ("skipped token-moe" in out.stdout) == (not moe)


def test_report_numbers_are_consistent(first_report):
    setup, _, folder = first_report
    r = json.loads((folder / "report.json").read_text())
    bpb, domains = r["lm"]["bits_per_byte"], r["domains"]
    from moe_experts.data.build import iter_documents

    sizes = {d: min(6, sum(1 for _ in iter_documents(setup.workspace, d, "test"))) for d in domains}
    assert {d: r["documents"][d]["documents"] for d in domains} == sizes
    # the oracle is each domain's own expert, and the generalist is the baseline of every difference
    for d in domains:
        assert bpb["oracle"][d] == bpb[f"expert:{setup.registry.by_domain(d).name}"][d]
        assert r["lm"]["vs_baseline"]["oracle"][d]["ratio"] == pytest.approx(bpb["oracle"][d] / bpb["generalist"][d], rel=1e-3)
        lo, hi = r["lm"]["vs_baseline"]["doc-top1"][d]["ratio_ci"]
        assert lo <= r["lm"]["vs_baseline"]["doc-top1"][d]["ratio"] <= hi
    assert bpb["seed"]["macro"] == pytest.approx(np.mean([bpb["seed"][d] for d in domains]), abs=1e-4)
    routing = r["routing"]["doc-top1"]
    assert sum(map(sum, routing["confusion"])) == routing["documents"] == sum(sizes.values())
    accuracy = sum(routing["confusion"][i][routing["experts"].index(setup.registry.by_domain(d).name)]
                   for i, d in enumerate(routing["labels"])) / routing["documents"]
    assert routing["accuracy"] == pytest.approx(accuracy, abs=1e-4)
    # a perfect router has no regret; this one's regret is bits per byte above the oracle, per domain
    for d in domains:
        assert routing["regret_bpb"][d] == pytest.approx(bpb["doc-top1"][d] - bpb["oracle"][d], abs=2e-4)
    assert set(r["suites"]) == {"mixed", "out_of_domain", "adversarial", "steering"}
    steered = r["suites"]["steering"]["by_system"]["doc-top1"]
    margin = steered["host_posterior_change"]  # each item routed again without its instruction
    assert -1.0 <= margin["min"] <= margin["mean"] <= 1.0 and 0.0 <= steered["decisions_changed"] <= 1.0
    cost = r["cost"]
    assert cost["doc-top2"]["active_params"] == 2 * cost["doc-top1"]["active_params"]
    assert cost["doc-top1"]["routing_ms_p50"] > 0 and cost["generalist"]["tokens_per_second"] > 0
    assert {t["domain"] for t in r["targets"]} == set(domains)


def test_existing_report_is_never_overwritten(first_report):
    setup, _, folder = first_report
    before = (folder / "report.json").read_bytes()
    out = eval_cli(setup, "--max-docs", "2", "--name", "first", "--no-timing")
    assert out.returncode == 4 and "never overwritten" in out.stderr
    assert (folder / "report.json").read_bytes() == before


def test_narrowed_run_and_compare(first_report):
    setup, _, _ = first_report
    out = eval_cli(setup, "--max-docs", "6", "--resamples", "200", "--systems", "generalist,doc-*,oracle",
                   "--domains", "code,law", "--no-suites", "--no-timing", "--top-k", "1", "--name", "second",
                   "--source-held-out", "4")
    assert out.returncode == 0, out.stderr
    r = json.loads((setup.workspace.reports_dir / "second" / "report.json").read_text())
    # every micro domain has one corpus source: nothing to hold out, and the report says so
    held = r["source_held_out"]
    assert held["per_source"] == 4 and held["sources"] == [] and held["macro"] is None
    assert held["skipped"] == [{"source": None, "reason": "no domain has more than one corpus source"}]
    assert "Routing, source held out" in (setup.workspace.reports_dir / "second" / "report.md").read_text()
    assert "skipped all: no domain has more than one corpus source" in out.stdout
    assert "source_held_out" not in json.loads((setup.workspace.reports_dir / "first" / "report.json").read_text())
    assert [s["name"] for s in r["systems"]] == ["generalist", "doc-top1", "oracle"]
    assert r["domains"] == ["code", "law"] and r["suites"] == {}
    assert r["cost"]["generalist"]["tokens_per_second"] is None
    cmp = eval_cli(setup, "compare", "first", "second")
    assert cmp.returncode == 0, cmp.stderr
    assert "Bits per byte: first (A) -> second (B)" in cmp.stdout and "only in A: seed" in cmp.stdout


@pytest.mark.parametrize("args, code, message", [
    (["--systems", "nothing-like-this"], 2, "no system matches nothing-like-this"),
    (["--domains", "astrology"], 2, "astrology"),
    (["--max-docs", "0"], 2, "Invalid value for '--max-docs': 0 is not in the range x>=1"),
    (["--source-held-out", "-1"], 2, "Invalid value for '--source-held-out': -1 is not in the range x>=0"),
    (["compare", "first", "no-such-report"], 2, "no report 'no-such-report'"),
])
def test_bad_input(first_report, args, code, message):
    setup, _, _ = first_report
    out = eval_cli(setup, *args)
    assert out.returncode == code and message in out.stderr and "Traceback" not in out.stderr


def test_missing_router_is_skipped_with_the_command(first_report, tmp_path: Path):
    from moe_experts.evaluation.runner import EvalOptions, run_eval
    from moe_experts.modeling.stages import Setup
    from moe_experts.workspace import Workspace

    setup, _, _ = first_report
    bare = Workspace(tmp_path / "ws")
    bare.root.mkdir(parents=True)
    for part in ("corpora", "models", "tokenizer"):  # everything but the router
        os.symlink(setup.workspace.root / part, bare.root / part)
    other = Setup(workspace=bare, registry=setup.registry, preset=setup.preset)
    r = run_eval(other, EvalOptions(max_docs=2, resamples=100, speed_prompts=0, latency_requests=0,
                                    systems=("generalist", "doc-top1")))
    assert [s["name"] for s in r["systems"]] == ["generalist"]
    assert r["skipped"] == [{"name": "doc-top1", "reason": "no document router in the workspace",
                             "hint": "build it with `moe-experts train-router`"}]


def test_empty_test_split_names_the_domain(tmp_path: Path, routed):
    from moe_experts.evaluation.runner import load_test_documents
    from moe_experts.workspace import Workspace

    setup, _, _ = routed
    ws = Workspace(tmp_path / "ws")
    for d in setup.registry.domains:
        (ws.root / "corpora" / d).mkdir(parents=True)
        src = setup.workspace.root / "corpora" / d / "test.jsonl"
        (ws.root / "corpora" / d / "test.jsonl").write_text("" if d == "law" else src.read_text())
    with pytest.raises(DataError, match="domain 'law' has an empty test split"):
        load_test_documents(type(setup)(workspace=ws, registry=setup.registry, preset=setup.preset), setup.registry.domains, None)


def test_unknown_report_schema_is_refused(tmp_path: Path):
    from moe_experts.evaluation.runner import load_report

    (tmp_path / "report.json").write_text(json.dumps({"kind": "moe-experts-report", "schema_version": 99}))
    with pytest.raises(ConfigError, match="schema version 99"):
        load_report(tmp_path)


def test_reuse_finds_the_report_by_its_inputs_and_ignores_temporaries(first_report):
    import shutil

    from moe_experts.evaluation.runner import latest_matching_report

    setup, _, folder = first_report
    report = json.loads((folder / "report.json").read_text())
    fingerprint = report["inputs"]["fingerprint"]
    assert latest_matching_report(setup.workspace.reports_dir, fingerprint) == folder
    half = setup.workspace.reports_dir / ".tmp-later-999999"  # a half-written report of another process
    shutil.copytree(folder, half)
    newer = {**report, "created": "2999-01-01T00:00:00+0000"}
    (half / "report.json").write_text(json.dumps(newer))
    try:
        assert latest_matching_report(setup.workspace.reports_dir, fingerprint) == folder
        assert latest_matching_report(setup.workspace.reports_dir, "0" * 16) is None
    finally:
        shutil.rmtree(half)
