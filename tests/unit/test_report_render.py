"""Report rendering: the PNG plots and the self-contained report.html.

The report dict is a trimmed copy of a real report.json (schema_version 1),
built fresh for each test so a test may mutate it.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import pytest

from moe_experts.evaluation.html import render_html, write_html
from moe_experts.evaluation.plots import write_plots
from moe_experts.evaluation.tables import Table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DOMAINS = ["code", "general", "law", "medicine"]


def _bpb(*values: float) -> dict[str, float]:
    return dict(zip([*DOMAINS, "macro"], values, strict=True))


def _vs(ratio_lo: float, ratio_hi: float) -> dict[str, object]:
    return {"diff": 0.0, "diff_ci": [-0.01, 0.01], "ratio": (ratio_lo + ratio_hi) / 2, "ratio_ci": [ratio_lo, ratio_hi]}


def _sample_report() -> dict:
    return {
        "schema_version": 1,
        "kind": "moe-experts-report",
        "name": "20261123-130500",
        "created": "2026-11-23T13:05:00+0000",
        "preset": "tiny",
        "machine": {"device": "cpu", "cpu": "AMD EPYC", "cores": 2, "gpu": None},
        "versions": {"moe_experts": "0.1.0"},
        "domains": list(DOMAINS),
        "baseline": "generalist",
        "oracle": "oracle",
        "systems": [
            {"name": "generalist", "kind": "dense", "description": "compute-matched generalist"},
            {"name": "seed", "kind": "dense", "description": "seed model"},
            {"name": "expert:code", "kind": "expert", "description": "expert 'code' on every domain"},
            {"name": "doc-top1", "kind": "routed", "description": "document router, top-1 expert"},
            {"name": "doc-top2", "kind": "routed", "description": "document router, top-2 mixture"},
            {"name": "oracle", "kind": "oracle", "description": "own domain's expert"},
        ],
        "skipped": [{"name": "moe", "reason": "no token-level MoE", "hint": "moe-experts train-router --kind token"}],
        "lm": {
            "bits_per_byte": {
                "generalist": _bpb(2.156, 2.606, 2.041, 2.154, 2.239),
                "seed": _bpb(2.488, 2.879, 2.323, 2.445, 2.534),
                # one domain missing: the plot must still be drawn
                "expert:code": {"code": 2.145, "general": 3.3, "law": 2.588, "macro": 2.729},
                "doc-top1": _bpb(2.146, 2.615, 2.046, 2.17, 2.244),
                "doc-top2": _bpb(2.14, 2.6, 2.04, 2.15, 2.2325),
                "oracle": _bpb(2.145, 2.61, 2.046, 2.165, 2.2415),
            },
            "vs_baseline": {
                "doc-top1": {
                    "code": _vs(0.99, 1.0),
                    "general": _vs(1.0004, 1.0065),
                    "law": _vs(0.9995, 1.0054),
                    "medicine": _vs(1.003, 1.012),
                    "macro": _vs(1.0005, 1.004),
                }
            },
        },
        "routing": {
            "doc-top1": {
                "accuracy": 0.9874,
                "macro_f1": 0.9875,
                "ece": 0.0143,
                "abstain_rate": 0.0008,
                "labels": list(DOMAINS),
                "experts": list(DOMAINS),
                "confusion": [[289, 0, 0, 0], [0, 289, 0, 11], [0, 0, 300, 0], [1, 3, 0, 296]],
                "reliability": [
                    {"lo": 0.0, "hi": 0.1, "count": 0, "confidence": None, "accuracy": None},
                    {"lo": 0.8, "hi": 0.9, "count": 20, "confidence": 0.86, "accuracy": 0.8},
                    {"lo": 0.9, "hi": 1.0, "count": 1150, "confidence": 0.991, "accuracy": 0.989},
                ],
                "regret_bpb": _bpb(0.0001, 0.005, 0.0, 0.005, 0.0025),
            },
            "doc-top2": {
                "accuracy": 0.98,
                "ece": None,
                "labels": list(DOMAINS),
                "experts": list(DOMAINS),
                "confusion": [[290, 0, 0, 0], [0, 295, 0, 5], [0, 0, 300, 0], [2, 2, 0, 296]],
                "reliability": [],
            },
        },
        "suites": {},
        "cost": {
            "generalist": {
                "total_params": 1377408,
                "active_params": 1377408,
                "flops_per_token": 2752000,
                "routing_ms_p50": None,
                "routing_ms_p99": None,
                "tokens_per_second": 190.0,
            },
            "doc-top1": {
                "total_params": 5509632,
                "active_params": 1377408,
                "flops_per_token": 2752000,
                "routing_ms_p50": 33.9,
                "routing_ms_p99": 62.6,
                "tokens_per_second": 185.0,
            },
        },
        "targets": [
            {
                "name": "doc-top1 / generalist bits per byte",
                "system": "doc-top1",
                "domain": "law",
                "value": 1.0024,
                "ci": [0.9995, 1.0054],
                "threshold": 0.96,
                "met": False,
            }
        ],
        "notes": ["doc-top1 is worse than the generalist on general, medicine (confidence interval above 1)"],
    }


@pytest.fixture
def report() -> dict:
    return _sample_report()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The sample's plots, drawn once for the tests that only read them (drawing is the slow part)."""
    folder = tmp_path_factory.mktemp("plots")
    return folder, write_plots(_sample_report(), folder)


@pytest.fixture
def tables() -> list[Table]:
    return [
        Table(
            title="Bits per byte (test split; lower is better)",
            header=["domain", "generalist", "doc-top1"],
            rows=[["code", "2.156", "**2.146**"], ["macro", "**2.239**", "2.244"]],
            notes=["bold: best of the row"],
        ),
        Table(
            title="Routing",
            header=["system", "accuracy", "ECE"],
            rows=[["doc-top1", "0.9874", "0.0143"], ["doc-top2", "0.98", "—"]],
        ),
    ]


def _assert_png(path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert len(data) > 1000, f"{path} is suspiciously small"
    assert data.startswith(PNG_SIGNATURE), path


# ---------------------------------------------------------------- plots


def test_write_plots_writes_every_plot(rendered):
    folder, plots = rendered
    assert plots == {
        "bits_per_byte": "bits_per_byte.png",
        "confusion:doc-top1": "confusion-doc-top1.png",
        "confusion:doc-top2": "confusion-doc-top2.png",
        "reliability": "reliability.png",
        "tradeoff": "tradeoff.png",
    }
    for name in plots.values():
        _assert_png(folder / name)
    assert sorted(p.name for p in folder.iterdir()) == sorted(plots.values())


def test_write_plots_with_empty_routing_and_cost_writes_only_bits_per_byte(report, tmp_path):
    report["routing"], report["cost"], report["suites"] = {}, {}, {}
    plots = write_plots(report, tmp_path)
    assert plots == {"bits_per_byte": "bits_per_byte.png"}
    _assert_png(tmp_path / "bits_per_byte.png")
    assert [p.name for p in tmp_path.iterdir()] == ["bits_per_byte.png"]


def test_write_plots_with_no_lm_values_writes_nothing(report, tmp_path):
    report["lm"] = {"bits_per_byte": {}}
    report["routing"], report["cost"] = {}, {}
    assert write_plots(report, tmp_path) == {}
    assert list(tmp_path.iterdir()) == []


def test_confusion_file_name_is_file_safe(report, tmp_path):
    report["routing"] = {"expert:code/v2": report["routing"]["doc-top1"]}
    plots = write_plots(report, tmp_path)
    assert plots["confusion:expert:code/v2"] == "confusion-expert_code_v2.png"
    _assert_png(tmp_path / "confusion-expert_code_v2.png")


def test_malformed_routing_entry_is_skipped_not_fatal(report, tmp_path):
    report["routing"]["doc-top2"]["confusion"] = [[1, 2]]  # shape does not match labels x experts
    plots = write_plots(report, tmp_path)
    assert "confusion:doc-top2" not in plots
    assert "confusion:doc-top1" in plots


def test_reliability_skipped_when_every_bin_is_empty(report, tmp_path):
    for routing in report["routing"].values():
        routing["reliability"] = [{"lo": 0.0, "hi": 1.0, "count": 0, "confidence": None, "accuracy": None}]
    assert "reliability" not in write_plots(report, tmp_path)


def test_tradeoff_falls_back_to_flops_without_throughput(report, tmp_path):
    for cost in report["cost"].values():
        cost["tokens_per_second"] = None
    plots = write_plots(report, tmp_path)
    _assert_png(tmp_path / plots["tradeoff"])


def test_plots_are_deterministic(rendered, report, tmp_path):
    folder, first = rendered
    assert write_plots(report, tmp_path) == first
    for name in first.values():
        assert (folder / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_importing_the_writers_does_not_import_matplotlib():
    code = (
        "import sys; import moe_experts.evaluation.plots, moe_experts.evaluation.html; "
        "sys.exit('matplotlib' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------- html


def test_html_is_self_contained_with_every_table_and_plot(rendered, report, tables):
    folder, plots = rendered
    page = render_html(report, tables, plots, folder)
    assert page.startswith("<!DOCTYPE html>")
    for table in tables:
        assert table.title in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(plots)
    assert {base64.b64decode(b) for b in images} == {(folder / n).read_bytes() for n in plots.values()}
    assert 'src="http' not in page
    assert "<link" not in page and "<script" not in page
    assert "20261123-130500" in page and "tiny" in page and "AMD EPYC" in page
    assert "doc-top1 is worse than the generalist" in page  # notes
    assert "not met" in page  # targets
    # bits_per_byte comes first, as in the report
    assert page.index("Bits per byte per domain") < page.index("Routing confusion for doc-top1")


def test_html_turns_double_stars_into_bold_and_right_aligns_numbers(report, tables, tmp_path):
    page = render_html(report, tables, {}, tmp_path)
    assert '<td class="num"><b>2.146</b></td>' in page
    assert "**" not in page
    assert "<td>code</td>" in page  # the label column stays left-aligned
    assert '<td class="num">—</td>' in page  # a blank in a numeric column


def test_html_escapes_text_from_the_report(report, tables, tmp_path):
    evil = "<script>alert(1)</script>"
    report["systems"][3]["name"] = evil
    report["lm"]["bits_per_byte"][evil] = report["lm"]["bits_per_byte"].pop("doc-top1")
    report["routing"] = {evil: report["routing"]["doc-top1"]}
    report["notes"] = [f"{evil} is **worse**"]
    report["name"] = evil
    tables[0].header[2] = evil
    tables[1].rows[0][0] = f"**{evil}**"
    # A stand-in PNG: what matters is the caption naming the system, not the drawing.
    (tmp_path / "c.png").write_bytes(PNG_SIGNATURE)
    page = render_html(report, tables, {f"confusion:{evil}": "c.png"}, tmp_path)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>&lt;script&gt;alert(1)&lt;/script&gt;</b>" in page
    assert "Routing confusion for &lt;script&gt;" in page


def test_html_skips_missing_plot_files(report, tables, tmp_path):
    page = render_html(report, tables, {"bits_per_byte": "missing.png"}, tmp_path)
    assert "data:image/png" not in page
    assert tables[0].title in page


def test_html_copes_with_a_minimal_report(tmp_path):
    page = render_html({"name": "bare", "domains": [], "systems": []}, [], {}, tmp_path)
    assert "bare" in page and page.rstrip().endswith("</html>")


def test_write_html_writes_utf8_report_html(report, tables, tmp_path):
    report["notes"] = ["résumé — naïve ✓"]
    path = write_html(report, tables, {}, tmp_path)
    assert path == tmp_path / "report.html"
    text = path.read_text(encoding="utf-8")
    assert "résumé — naïve ✓" in text
    assert '<meta charset="utf-8">' in text


def _mini_report(name: str, domains: list[str], bpb: dict[str, dict[str, float]], confusion: list[list[int]]) -> dict:
    systems = list(bpb)
    return {
        "name": name, "domains": domains, "settings": {"max_docs": 10},
        "documents": {d: {"documents": 10, "bytes": 1000} for d in domains},
        "systems": [{"name": s, "kind": "routed" if s == "doc-top1" else "dense", "description": s} for s in systems],
        "lm": {"bits_per_byte": {s: {**v, "macro": sum(v.values()) / len(v)} for s, v in bpb.items()}},
        "routing": {"doc-top1": {"accuracy": 0.9, "macro_f1": 0.9, "ece": 0.01, "abstain_rate": 0.0,
                                 "labels": domains, "experts": domains, "confusion": confusion}},
        "targets": [],
    }


def test_compare_after_an_expert_was_added_covers_the_common_domains_and_each_ones_routing():
    from moe_experts.evaluation.report import compare, plain

    a = _mini_report("before", ["code", "law"], {"doc-top1": {"code": 2.0, "law": 3.0}}, [[10, 0], [1, 9]])
    b = _mini_report("after", ["code", "law", "unix"], {"doc-top1": {"code": 2.0, "law": 3.1, "unix": 9.0}},
                     [[8, 0, 2], [1, 9, 0], [0, 0, 10]])
    bpb, routing = compare(a, b)[:2]
    rows = {(r[0], r[1]): r for r in bpb.rows}
    assert ("doc-top1", "unix") not in rows and ("doc-top1", "macro") not in rows
    assert rows[("doc-top1", "macro of 2")][2:5] == ["2.5000", "2.5500", "+0.0500"]  # not 2.5 -> 4.7
    assert any("domains only in B: unix" in n for n in bpb.notes)
    assert not any("different test documents" in n for n in bpb.notes)
    accuracy = {r[1]: r for r in routing.rows}
    assert accuracy["accuracy: code"][2:] == ["1.0000", "0.8000", "-0.2000"]
    assert accuracy["accuracy: law"][4] == "+0.0000"
    assert "macro of 2" in plain(bpb)
