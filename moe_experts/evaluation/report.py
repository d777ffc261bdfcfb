"""Write a report folder (report.md, report.json, report.html, PNG plots) and compare two reports.

``runs/<name>/reports/<stamp>/`` is written to a temporary folder and renamed
into place, and an existing report folder is never overwritten. report.json is
validated against ``report.schema.json`` (shipped with the package) before it
is written, and again when ``eval compare`` reads it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from moe_experts.errors import ConfigError, WorkspaceError
from moe_experts.evaluation.runner import ORACLE, ROUTED_TOP1, load_report
from moe_experts.evaluation.tables import Table, training_run
from moe_experts.workspace import TMP_PREFIX

MACRO = "macro"


# ---------------------------------------------------------------------------- validation
def schema() -> dict[str, Any]:
    return json.loads(resources.files("moe_experts.evaluation").joinpath("report.schema.json").read_text("utf-8"))


def validate(report: dict[str, Any]) -> None:
    """Raise ConfigError naming the first field that breaks the report schema."""
    import jsonschema

    try:
        jsonschema.validate(report, schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ConfigError(f"report does not match its schema at {where}: {exc.message}") from None


# ---------------------------------------------------------------------------- formatting
def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _int(x: int | None) -> str:
    return "n/a" if x is None else f"{x:,}"


def _ci(v: dict[str, Any], key: str, digits: int = 3) -> str:
    lo, hi = v[f"{key}_ci"]
    return f"{_f(v[key], digits)} [{_f(lo, digits)}, {_f(hi, digits)}]"


def _systems(report: dict[str, Any], kinds: tuple[str, ...] | None = None) -> list[str]:
    return [s["name"] for s in report["systems"] if kinds is None or s["kind"] in kinds]


def _per_domain_table(report: dict[str, Any], metric: str, title: str, *, digits: int = 3) -> Table:
    """Rows are domains (and the macro average), columns systems; the best non-oracle value of a row in bold."""
    values = report["lm"][metric]
    systems = [s for s in _systems(report) if s in values]
    rows = []
    for d in [*report["domains"], MACRO]:
        candidates = {s: values[s].get(d) for s in systems if s != ORACLE and values[s].get(d) is not None}
        best = min(candidates, key=candidates.__getitem__) if candidates else None
        cells = [f"**{_f(values[s].get(d), digits)}**" if s == best else _f(values[s].get(d), digits) for s in systems]
        rows.append([d, *cells])
    notes = ["bold: best per row among real systems (the oracle is a reference, not a system you can run)"]
    return Table(title, ["domain", *systems], rows, notes)


def tables(report: dict[str, Any]) -> list[Table]:
    """Every table of the report, in order (Markdown and HTML render these)."""
    out = [headline_table(report)]
    out.append(_per_domain_table(report, "bits_per_byte", "Bits per byte on the test split (lower is better)"))
    out.append(_per_domain_table(report, "perplexity",
                                 "Perplexity per token of each system's own tokenizer (lower is better)", digits=2))
    vs = report["lm"]["vs_baseline"]
    if vs:
        conf = int(round(100 * report["settings"]["confidence"]))
        systems = [s for s in _systems(report) if s in vs]
        rows = []
        for d in [*report["domains"], MACRO]:
            cells = []
            for s in systems:
                v = vs[s][d]
                mark = " (worse)" if v["ratio_ci"][0] > 1 else " (better)" if v["ratio_ci"][1] < 1 else ""
                cells.append(_ci(v, "ratio", 4) + mark)
            rows.append([d, *cells])
        out.append(Table(f"Bits per byte / {report['baseline']}'s, with {conf}% bootstrap intervals over documents",
                         ["domain", *systems], rows,
                         ["below 1: better than the generalist; (worse) / (better): the whole interval is on that side of 1"]))
        rows = [[d, *[_ci(vs[s][d], "diff", 4) for s in systems]] for d in [*report["domains"], MACRO]]
        out.append(Table(f"Bits per byte minus {report['baseline']}'s, with {conf}% intervals", ["domain", *systems], rows))
    gap = report["lm"]["gap_to_oracle"]
    if gap:
        systems = [s for s in _systems(report) if s in gap]
        rows = [[d, *[f"{100 * gap[s][d]:+.2f}%" if gap[s][d] is not None else "n/a" for s in systems]]
                for d in [*report["domains"], MACRO]]
        out.append(Table("Gap to the oracle (bits per byte over the oracle's, minus 1)", ["domain", *systems], rows))
    for name, r in report["routing"].items():
        summary = [["top-1 accuracy (abstains count as the fallback)", _f(r["accuracy"], 4)],
                   ["classifier accuracy (before abstaining)", _f(r.get("classifier_accuracy"), 4)],
                   ["macro-F1", _f(r["macro_f1"], 4)], ["expected calibration error", _f(r["ece"], 4)],
                   ["abstain rate", _f(r["abstain_rate"], 4)], ["documents", _int(r["documents"])]]
        summary += [[f"regret against the oracle, {d} (bits per byte)", _f(v, 4)] for d, v in r["regret_bpb"].items()]
        out.append(Table(f"Routing: {name}", ["metric", "value"], summary))
        out.append(Table(f"Confusion: {name} (rows: true domain, columns: chosen expert)",
                         ["true domain", *r["experts"]], [[d, *[str(c) for c in row]] for d, row in zip(r["labels"], r["confusion"])]))
    if report["suites"]:
        rows = []
        for name, s in report["suites"].items():
            for system, v in s["by_system"].items():
                routed = ", ".join(f"{e} {n}" for e, n in v["routed"].items())
                rows.append([name, system, str(s["documents"]), _f(v["correct"], 3),
                             _f(v.get("to_host"), 3) if "to_host" in v else "", _f(v["abstained"], 3), routed])
        notes = [f"{name}: {s['description']}; correct = {s['expected']}" for name, s in report["suites"].items()]
        for system, v in report["suites"].get("steering", {}).get("by_system", {}).items():
            if "host_posterior_change" in v:  # the same documents routed without their instruction
                m = v["host_posterior_change"]
                notes.append(f"steering, {system}: the instruction changed the host expert's posterior by "
                             f"{m['mean']:+.3f} on average ({m['min']:+.3f} at worst) and "
                             f"{100 * v['decisions_changed']:.1f}% of the decisions")
        out.append(Table("Routing suites", ["suite", "system", "documents", "correct", "to host", "abstained", "routed to"],
                         rows, notes))
        rows = [[name, system, variant, str(v["documents"]), _f(v["correct"], 3)]
                for name, s in report["suites"].items() for system, per in s["by_system"].items()
                for variant, v in per.get("variants", {}).items()]
        if rows:
            out.append(Table("Routing suites by variant", ["suite", "system", "variant", "documents", "correct"], rows))
    if report.get("source_held_out"):
        out.append(source_held_out_table(report))
    if report["cost"]:
        rows = []
        for s in _systems(report):
            c = report["cost"].get(s)
            if c is None:
                continue
            rows.append([s, _int(c["total_params"]), _int(c.get("router_params")) if c.get("router_params") else "",
                         _int(c["active_params"]), _int(c["flops_per_token"]),
                         _int(c["training_tokens"]) if c.get("training_tokens") is not None else "",
                         _f(c["routing_ms_p50"], 1), _f(c["routing_ms_p99"], 1), _f(c["tokens_per_second"], 1)])
        out.append(Table("Cost", ["system", "parameters", "router parameters", "active per token", "FLOPs per token",
                                  "training tokens", "routing p50 ms",
                                  "routing p99 ms", "generation tokens/s"], rows,
                         ["FLOPs: forward pass at a full context; router parameters (the embedder) run once per "
                          "request, not per token; training tokens: behind the weights scored (a routed system's "
                          "experts: their seed's once, plus each branch's; the MoE adds its own training), so a "
                          "comparison says whether it is at equal tokens; routing: one request at a time "
                          "(embed + search + classifier); tokens/s: greedy, one prompt at a time, on "
                          + report["machine"]["device"]]))
    for name, load in report.get("expert_load", {}).items():
        experts = load["experts"]
        rows = []
        for row in load["layers"]:
            for domain, share in [*row["share_by_domain"].items(), ("all", row["share"])]:
                rows.append([str(row["layer"]), domain, *[f"{100 * share[e]:.1f}%" for e in experts],
                             f"{row['mean_token_entropy']:.3f}" if domain == "all" else "",
                             ", ".join(row["dead"]) if domain == "all" else ""])
        out.append(Table(f"Expert load: {name} (share of each domain's test tokens, top-{load['top_k']} slots)",
                         ["layer", "domain", *experts, "entropy", "dead (< 5%)"], rows,
                         ["entropy: mean per-token routing entropy, 1 = uniform over the experts"]))
    if report["targets"]:
        rows = [[t["domain"], t["name"], _f(t["value"], 4),
                 f"[{_f(t['ci'][0], 4)}, {_f(t['ci'][1], 4)}]" if t["ci"] else "", f"<= {t['threshold']}",
                 "met" if t["met"] else "**not met**"] for t in report["targets"]]
        run = training_run(report)
        out.append(Table(f"Targets ({run})" if run else "Targets",
                         ["domain", "target", "value", "interval", "threshold", "result"], rows))
    return out


def source_held_out_table(report: dict[str, Any]) -> Table:
    """The ``source_held_out`` section (``eval --source-held-out N``) as a table."""
    held = report["source_held_out"]
    rows = [[r["source"], r["domain"], str(r["documents"]), _f(r["routed"]["accuracy"], 3),
             "–".join(_f(x, 3) for x in r["routed"]["interval_95"]), _f(r["top1"]["accuracy"], 3),
             ", ".join(f"{e} {n}" for e, n in r["routed_to"].items())] for r in held["sources"]]
    if held["macro"]:
        m = held["macro"]
        rows.append([f"macro over {m['sources']}", "", "", _f(m["accuracy"], 3),
                     "–".join(_f(x, 3) for x in m["interval_95_bootstrap"]), "", ""])
    notes = [f"a router fitted without each source ({held['recipe']}) routes up to {held['per_source']} of "
             f"its val and test documents; {held['rule']}; intervals: Wilson 95% per source, a stratified "
             "bootstrap for the macro"]
    notes += [f"skipped {s['source'] or 'all'}: {s['reason']}" for s in held["skipped"]]
    if report["routing"].get("doc-top1"):
        notes.append(f"in distribution (the test split, sources seen in training): doc-top1 accuracy "
                     f"{_f(report['routing']['doc-top1']['accuracy'], 4)}")
    return Table("Routing, source held out (documents of a corpus source the router never saw)",
                 ["source", "domain", "documents", "routed accuracy", "95% interval", "top-1", "routed to"], rows, notes)


def headline_table(report: dict[str, Any]) -> Table:
    """Generalist, routed top-1 and oracle side by side: the table quickstart prints."""
    bpb, vs, gap = report["lm"]["bits_per_byte"], report["lm"]["vs_baseline"], report["lm"]["gap_to_oracle"]
    base, routed = report["baseline"], ROUTED_TOP1 if ROUTED_TOP1 in bpb else None
    header = ["domain"]
    header += [base] if base else []
    header += [routed] if routed else []
    header += ["top-1 / generalist [CI]"] if base and routed else []
    header += ["oracle", "top-1 gap to oracle"] if routed and ORACLE in bpb else []
    real = [s for s in _systems(report) if s != ORACLE]
    header.append("best system")
    rows = []
    for d in [*report["domains"], MACRO]:
        row = [d]
        row += [_f(bpb[base][d])] if base else []
        row += [_f(bpb[routed][d])] if routed else []
        row += [_ci(vs[routed][d], "ratio")] if base and routed else []
        row += [_f(bpb[ORACLE][d]), f"{100 * gap[routed][d]:+.2f}%"] if routed and ORACLE in bpb else []
        values = {s: bpb[s][d] for s in real if bpb[s].get(d) is not None}
        row.append(min(values, key=values.__getitem__) if values else "n/a")
        rows.append(row)
    return Table("Headline: bits per byte on the test split (lower is better)", header, rows)


def markdown(report: dict[str, Any], table_list: list[Table], plots: dict[str, str]) -> str:
    lines = [f"# moe-experts report {report['name']}", "",
             f"Preset `{report['preset']}`, workspace `{report['workspace']}`, created {report['created']}, "
             f"on {report['machine']['device']} ({report['machine'].get('gpu') or report['machine'].get('cpu')}), "
             f"{report['seconds']:.0f} s.", ""]
    docs = ", ".join(f"{d} {v['documents']:,} ({v['bytes']:,} bytes)" for d, v in report["documents"].items())
    lines += [f"Test documents: {docs}" + (f" (at most {report['settings']['max_docs']} a domain)"
                                            if report["settings"]["max_docs"] else "") + ".", ""]
    lines += ["Systems: " + "; ".join(f"`{s['name']}`: {s['description']}" for s in report["systems"]) + ".", ""]
    if report["notes"]:
        lines += ["## What to notice", "", *[f"- {n}" for n in report["notes"]], ""]
    lines += ["## Tables", ""]
    for t in table_list:
        lines += [t.markdown()]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{key}]({name})" for key, name in plots.items()]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- writing
def new_report_dir(reports_dir: Path, name: str | None) -> Path:
    """A report folder that does not exist yet: ``name`` (refused if taken) or a UTC time stamp."""
    if name is not None:
        if not name or "/" in name or name.startswith(".") or name == "sanity":
            raise ConfigError(f"report name '{name}' is not a usable folder name", hint="use letters, digits, - and _")
        folder = reports_dir / name
        if folder.exists():
            raise WorkspaceError(f"report folder {folder} already exists; reports are never overwritten",
                                 hint="pick another report name, or remove that folder yourself")
        return folder
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder, n = reports_dir / stamp, 1
    while folder.exists():
        n += 1
        folder = reports_dir / f"{stamp}-{n}"
    return folder


def _reserve(reports_dir: Path, name: str | None) -> Path:
    """Create the empty report folder (mkdir is atomic: two writers cannot both get a name)."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        folder = new_report_dir(reports_dir, name)
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            if name is not None:
                raise WorkspaceError(f"report folder {folder} already exists; reports are never overwritten",
                                     hint="pick another report name, or remove that folder yourself") from None
    raise WorkspaceError(f"could not reserve a report folder in {reports_dir}")


def write_report(report: dict[str, Any], reports_dir: Path, name: str | None = None) -> Path:
    """Write report.json / .md / .html and the plots into a new folder under ``reports_dir``; the folder."""
    from moe_experts.evaluation.html import write_html
    from moe_experts.evaluation.plots import write_plots

    folder = _reserve(reports_dir, name)  # an empty folder: the name is ours, nobody else's report is touched
    report["name"] = folder.name
    tmp = folder.parent / f"{TMP_PREFIX}{folder.name}-{os.getpid()}"  # pid-suffixed: cleaners leave it alone
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        plots = write_plots(report, tmp)
        report["files"] = {"markdown": "report.md", "json": "report.json", "html": "report.html", "plots": plots}
        validate(report)
        table_list = tables(report)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(markdown(report, table_list, plots), encoding="utf-8")
        write_html(report, table_list, plots, tmp)
        tmp.rename(folder)  # replaces the empty reserved folder only (rename refuses a non-empty one)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if still empty
        raise
    return folder


# ---------------------------------------------------------------------------- compare
def resolve_report(arg: str, reports_dir: Path) -> Path:
    """A report given as a folder, a report.json, or a name under the workspace's reports folder."""
    path = Path(arg)
    if path.exists():
        return path
    if (reports_dir / arg).exists():
        return reports_dir / arg
    known = sorted(p.name for p in reports_dir.iterdir() if (p / "report.json").exists()) if reports_dir.exists() else []
    raise ConfigError(f"no report '{arg}' (not a path, and not in {reports_dir})",
                      hint="reports here: " + (", ".join(known[-5:]) if known else "none yet; run `moe-experts eval`"))


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[Table]:
    """What changed from report A to report B: bits per byte per system and domain, routing, targets."""
    out = []
    bpb_a, bpb_b = a["lm"]["bits_per_byte"], b["lm"]["bits_per_byte"]
    systems = [s for s in _systems(b) if s in bpb_a]
    domains = [d for d in b["domains"] if d in a["domains"]]
    same_set = set(a["domains"]) == set(b["domains"])
    # after an expert was added or removed, a macro over different domains says nothing: compare the common ones
    macro = MACRO if same_set else f"macro of {len(domains)}"
    rows = []
    for s in systems:
        for d in [*domains, macro]:
            if d == macro and not same_set:
                va, vb = (sum(x[s][c] for c in domains) / len(domains) if domains else None for x in (bpb_a, bpb_b))
            else:
                va, vb = bpb_a[s].get(d), bpb_b[s].get(d)
            if va is None or vb is None:
                continue
            rows.append([s, d, _f(va, 4), _f(vb, 4), f"{vb - va:+.4f}", f"{100 * (vb / va - 1):+.2f}%"])
    notes = []
    if a["settings"].get("max_docs") != b["settings"].get("max_docs") or any(
            a["documents"][d] != b["documents"][d] for d in domains):
        notes.append("the two reports scored different test documents; differences mix models and data")
    if not same_set:
        only_b = [d for d in b["domains"] if d not in a["domains"]]
        only_a = [d for d in a["domains"] if d not in b["domains"]]
        notes.append("the expert set changed (" + "; ".join(
            part for part in (f"domains only in B: {', '.join(only_b)}" if only_b else "",
                              f"only in A: {', '.join(only_a)}" if only_a else "") if part)
            + f"): rows cover the {len(domains)} domains both scored, and `{macro}` is their mean")
    added = [s for s in _systems(b) if s not in bpb_a]
    removed = [s for s in _systems(a) if s not in bpb_b]
    if added:
        notes.append("only in B: " + ", ".join(added))
    if removed:
        notes.append("only in A: " + ", ".join(removed))
    out.append(Table(f"Bits per byte: {a['name']} (A) -> {b['name']} (B)", ["system", "domain", "A", "B", "B - A", "change"],
                     rows, notes))
    rows = []
    for name in [n for n in b["routing"] if n in a["routing"]]:
        for key in ("accuracy", "macro_f1", "ece", "abstain_rate"):
            va, vb = a["routing"][name][key], b["routing"][name][key]
            rows.append([name, key, _f(va, 4), _f(vb, 4), f"{vb - va:+.4f}" if va is not None and vb is not None else ""])
        for d in domains:  # each domain's share routed to its own expert: did the old domains hold?
            va, vb = _domain_accuracy(a["routing"][name], d), _domain_accuracy(b["routing"][name], d)
            if va is not None and vb is not None:
                rows.append([name, f"accuracy: {d}", _f(va, 4), _f(vb, 4), f"{vb - va:+.4f}"])
    if rows:
        out.append(Table("Routing", ["system", "metric", "A", "B", "B - A"], rows))
    ta = {(t["name"], t["domain"]): t for t in a["targets"]}
    rows = [[t["domain"], t["name"], _f(ta[(t["name"], t["domain"])]["value"], 4) if (t["name"], t["domain"]) in ta else "",
             _f(t["value"], 4), ("met" if ta[(t["name"], t["domain"])]["met"] else "not met") if (t["name"], t["domain"]) in ta else "",
             "met" if t["met"] else "not met"] for t in b["targets"]]
    if rows:
        out.append(Table("Targets", ["domain", "target", "A", "B", "A result", "B result"], rows))
    return out


def _domain_accuracy(routing: dict[str, Any], domain: str) -> float | None:
    """The share of a domain's test documents routed to its own expert, from a routing section's confusion."""
    expert = routing.get("expert_of", {}).get(domain, domain)  # older reports: cards named after their domains
    if domain not in routing.get("labels", []) or expert not in routing.get("experts", []):
        return None
    row = routing["confusion"][routing["labels"].index(domain)]
    return row[routing["experts"].index(expert)] / max(1, sum(row))


def compare_paths(arg_a: str, arg_b: str, reports_dir: Path) -> tuple[dict[str, Any], dict[str, Any], list[Table]]:
    a = load_report(resolve_report(arg_a, reports_dir))
    b = load_report(resolve_report(arg_b, reports_dir))
    validate(a)
    validate(b)
    return a, b, compare(a, b)


def plain(table: Table) -> str:
    """A table as aligned plain text for the terminal."""
    strip = [[c.replace("**", "") for c in row] for row in [table.header, *table.rows]]
    widths = [max(len(row[i]) for row in strip) for i in range(len(table.header))]
    lines = [table.title]
    for j, row in enumerate(strip):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"  {n}" for n in table.notes]
    return "\n".join(lines)
