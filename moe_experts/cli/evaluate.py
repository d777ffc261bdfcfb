"""``moe-experts eval``: the per-domain scoreboard, ``eval compare`` of two reports, ``eval spread`` over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from moe_experts.cli.common import csv_names, load_setup, repo_file, state
from moe_experts.cli.printing import print_report_summary
from moe_experts.evaluation.options import DEFAULTS, EvalOptions


@click.group("eval", invoke_without_command=True)
@click.option("--domains", metavar="A,B", help="Only these domains [default: every card's].")
@click.option("--systems", metavar="A,B", help="Only these systems; glob patterns work ('expert:*', 'doc-*') [default: all].")
@click.option("--max-docs", type=click.IntRange(min=1), metavar="N",
              help="At most N test documents a domain (a fixed hash-ordered sample).")
@click.option("--top-k", type=click.IntRange(min=1), default=DEFAULTS.top_k, show_default=True,
              help="Experts in the router's mixture system (1: none).")
@click.option("--resamples", type=click.IntRange(min=100), default=DEFAULTS.resamples, show_default=True,
              help="Bootstrap resamples for the intervals.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Seed of the bootstrap.")
@click.option("--no-suites", is_flag=True, help="Skip the routing suites (mixed, out-of-domain, adversarial).")
@click.option("--suites-recipe", type=click.Path(path_type=Path, dir_okay=False), metavar="YAML",
              help="Routing-suite recipe [default: eval/suites.yaml, else built-in defaults].")
@click.option("--no-timing", is_flag=True, help="Do not measure generation speed and routing latency.")
@click.option("--source-held-out", type=click.IntRange(min=0), default=DEFAULTS.source_held_out, metavar="N",
              help="Also measure routing on unseen sources: for each corpus source of a domain with several, fit a "
                   "router without it and route up to N of its val/test documents (0: skip) [default: 0].")
@click.option("--name", metavar="NAME", help="Report folder name under reports/ [default: a UTC time stamp]; never overwritten.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="Write the report under DIR instead of the workspace's reports/; the workspace is then only read "
                   "(it may be read-only).")
@click.pass_context
def eval_cmd(ctx: click.Context, domains: str | None, systems: str | None, max_docs: int | None, top_k: int,
             resamples: int, seed: int, no_suites: bool, suites_recipe: Path | None, no_timing: bool,
             source_held_out: int, name: str | None, out: Path | None) -> None:
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
    from moe_experts.pipeline import evaluate

    setup = load_setup(ctx, write=out is None)
    opts = EvalOptions(domains=csv_names(domains), systems=csv_names(systems), max_docs=max_docs, top_k=top_k,
                       resamples=resamples, seed=seed, suites=not no_suites,
                       suite_recipe=suites_recipe or repo_file("eval/suites.yaml"),
                       speed_prompts=0 if no_timing else DEFAULTS.speed_prompts,
                       latency_requests=0 if no_timing else DEFAULTS.latency_requests,
                       source_held_out=source_held_out)
    result = evaluate(setup, opts, name, out=out)
    print_report_summary(result.report, result.folder)


@eval_cmd.command("compare")
@click.argument("report_a", metavar="A")
@click.argument("report_b", metavar="B")
@click.pass_context
def eval_compare(ctx: click.Context, report_a: str, report_b: str) -> None:
    """Show what changed from report A to report B (folders, report.json files, or names under reports/)."""
    from moe_experts.evaluation.report import compare_paths, plain

    a, b, table_list = compare_paths(report_a, report_b, _reports_dir(ctx))
    click.echo(f"A: {a['name']} ({a['created']}, preset {a['preset']})\nB: {b['name']} ({b['created']}, preset {b['preset']})\n")
    for t in table_list:
        click.echo(plain(t) + "\n")


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
    from moe_experts.evaluation.report import plain
    from moe_experts.evaluation.spread import spread_tables
    from moe_experts.pipeline import report_spread

    result = report_spread(reports, _reports_dir(ctx))
    for t in spread_tables(result):
        click.echo(plain(t) + "\n")
    met = sum(t["met"] for t in result["targets"])
    click.echo(f"targets: {met}/{len(result['targets'])} met on the mean and its interval over {result['seeds']} seeds")
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def _reports_dir(ctx: click.Context) -> Path:
    """The workspace's reports folder without loading the preset or the cards (reading reports needs neither)."""
    from moe_experts.workspace import resolve_workspace

    s = state(ctx)
    path = Path(s.preset_arg)
    preset_name = path.stem if path.suffix in (".yaml", ".yml") else s.preset_arg
    return resolve_workspace(s.workspace_arg, preset_name).reports_dir
