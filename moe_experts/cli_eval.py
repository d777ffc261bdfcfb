"""``moe-experts eval``: the per-domain scoreboard, and ``eval compare`` of two reports.

Thin like the rest of the CLI: parse, call ``moe_experts.evaluation``, print.
Registered on the main group by ``moe_experts.cli``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from moe_experts.cli import _setup, cli


def _csv(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter("give at least one name (comma-separated)")
    return items


@cli.group("eval", invoke_without_command=True)
@click.option("--domains", metavar="A,B", help="Only these domains [default: every card's].")
@click.option("--systems", metavar="A,B", help="Only these systems; glob patterns work ('expert:*', 'doc-*') [default: all].")
@click.option("--max-docs", type=int, metavar="N", help="At most N test documents a domain (a fixed hash-ordered sample).")
@click.option("--top-k", type=int, default=2, show_default=True, help="Experts in the router's mixture system (1: none).")
@click.option("--resamples", type=int, default=1000, show_default=True, help="Bootstrap resamples for the intervals.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--no-suites", is_flag=True, help="Skip the routing suites (mixed, out-of-domain, adversarial).")
@click.option("--suites-recipe", type=click.Path(path_type=Path, dir_okay=False), metavar="YAML",
              help="Routing-suite recipe [default: eval/suites.yaml, else built-in defaults].")
@click.option("--no-timing", is_flag=True, help="Do not measure generation speed and routing latency.")
@click.option("--name", metavar="NAME", help="Report folder name under reports/ [default: a UTC time stamp]; never overwritten.")
@click.pass_context
def eval_cmd(ctx: click.Context, domains: str | None, systems: str | None, max_docs: int | None, top_k: int,
             resamples: int, seed: int, no_suites: bool, suites_recipe: Path | None, no_timing: bool,
             name: str | None) -> None:
    """Evaluate every system in the workspace on the test split; write a report.

    Systems: the generalist(s), the seed, each expert alone, the document router
    (top-1 and its top-k mixture), the token-level MoE when built, and the oracle
    (each document scored by its own domain's expert). A system that is missing
    is skipped with the command that builds it.

    The report goes to <workspace>/reports/<stamp>/: report.md, report.json,
    report.html and PNG plots. `moe-experts eval compare A B` shows what changed.
    """
    if ctx.invoked_subcommand is not None:
        return
    from moe_experts.evaluation.runner import EvalOptions

    setup = _setup(ctx)
    opts = EvalOptions(domains=_csv(domains), systems=_csv(systems), max_docs=max_docs, top_k=top_k,
                       resamples=resamples, seed=seed, suites=not no_suites, suite_recipe=suites_recipe,
                       speed_prompts=0 if no_timing else 4, latency_requests=0 if no_timing else 50)
    folder, report = evaluate_and_write(setup, opts, name)
    print_report_summary(report, folder)


def evaluate_and_write(setup: Any, opts: Any, name: str | None = None) -> tuple[Path, dict[str, Any]]:
    from moe_experts.evaluation.report import new_report_dir, write_report
    from moe_experts.evaluation.runner import run_eval

    new_report_dir(setup.workspace.reports_dir, name)  # refuse a taken --name before an hour of work
    click.echo(f"evaluating on the test split of {', '.join(opts.domains or setup.registry.domains)}"
               + (f" (at most {opts.max_docs} documents a domain)" if opts.max_docs else ""), err=True)
    report = run_eval(setup, opts)
    return write_report(report, setup.workspace.reports_dir, name), report


def print_report_summary(report: dict[str, Any], folder: Path) -> None:
    from moe_experts.evaluation.report import headline_table, plain

    for s in report["skipped"]:
        click.echo(f"skipped {s['name']}: {s['reason']} -> {s['hint']}")
    click.echo("")
    click.echo(plain(headline_table(report)))
    missed = [t for t in report["targets"] if not t["met"]]
    if report["targets"]:
        click.echo(f"\ntargets: {len(report['targets']) - len(missed)}/{len(report['targets'])} met")
        for t in missed:
            click.echo(f"  not met: {t['name']} on {t['domain']}: {t['value']:.4f} > {t['threshold']}")
    for note in report["notes"]:
        if not note.startswith("skipped "):
            click.echo(f"note: {note}")
    click.echo(f"\nreport: {folder}/report.md  (html: {folder}/report.html, json: {folder}/report.json)")


@eval_cmd.command("compare")
@click.argument("report_a", metavar="A")
@click.argument("report_b", metavar="B")
@click.pass_context
def eval_compare(ctx: click.Context, report_a: str, report_b: str) -> None:
    """Show what changed from report A to report B (folders, report.json files, or names under reports/)."""
    from moe_experts.evaluation.report import compare_paths, plain
    from moe_experts.workspace import resolve_workspace

    state = ctx.find_root().obj
    reports_dir = resolve_workspace(state.workspace_arg, _preset_name(state.preset_arg)).reports_dir
    a, b, table_list = compare_paths(report_a, report_b, reports_dir)
    click.echo(f"A: {a['name']} ({a['created']}, preset {a['preset']})\nB: {b['name']} ({b['created']}, preset {b['preset']})\n")
    for t in table_list:
        click.echo(plain(t) + "\n")


def _preset_name(arg: str) -> str:
    """The preset's name without loading it (compare needs only the workspace folder)."""
    path = Path(arg)
    return path.stem if path.suffix in (".yaml", ".yml") else arg


@eval_cmd.command("spread")
@click.argument("reports", nargs=-1, required=True, metavar="REPORT...")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Also write the spread as JSON.")
@click.pass_context
def eval_spread(ctx: click.Context, reports: tuple[str, ...], json_out: Path | None) -> None:
    """The spread of the headline ratios over training seeds: one report per seed (folders or report.json).

    Train each seed in its own workspace (`moe-experts --seed N quickstart` uses runs/<preset>-seed<N>),
    then give every report. A target counts as met only when the seeds' mean and its interval clear it.
    """
    import json

    from moe_experts.evaluation.report import load_report, plain, resolve_report, validate
    from moe_experts.evaluation.spread import seed_spread, spread_tables
    from moe_experts.workspace import resolve_workspace

    state = ctx.find_root().obj
    reports_dir = resolve_workspace(state.workspace_arg, _preset_name(state.preset_arg)).reports_dir
    loaded = [load_report(resolve_report(r, reports_dir)) for r in reports]
    for report in loaded:
        validate(report)
    result = seed_spread(loaded)
    for t in spread_tables(result):
        click.echo(plain(t) + "\n")
    met = sum(t["met"] for t in result["targets"])
    click.echo(f"targets: {met}/{len(result['targets'])} met on the mean and its interval over {result['seeds']} seeds")
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
