"""``moe-experts quickstart``: the main job, end to end."""

from __future__ import annotations

from pathlib import Path

import click

from moe_experts.cli.common import load_setup, repo_file, restart_option, resume_option, train_options
from moe_experts.cli.printing import print_corpora, print_doc_router_summary, print_report_summary, print_sanity


@click.command()
@resume_option
@restart_option
@click.option("--update", is_flag=True, help="Rebuild stale artifacts (e.g. after editing a card) instead of stopping.")
@click.option("--rebuild", is_flag=True, help="Build every card's corpus together and retrain everything from them; "
              "without it a card new to the workspace is added alone (`moe-experts experts add`).")
@click.option("--strict", is_flag=True, help="Fail when any corpus source is missing, not only when a domain is too small.")
@click.option("--recipe", type=click.Path(path_type=Path, dir_okay=False), metavar="YAML",
              help="Document-router recipe [default: router_training/doc.yaml, else built-in defaults].")
@click.option("--eval-max-docs", type=int, default=300, show_default=True, metavar="N",
              help="Test documents a domain in the final report (a fixed sample; `moe-experts eval` scores all).")
@click.pass_context
def quickstart(ctx: click.Context, resume: bool, restart: bool, update: bool, rebuild: bool, strict: bool,
               recipe: Path | None, eval_max_docs: int) -> None:
    """Build everything missing, check the experts, train the router, write the report.

    Corpora, tokenizer, seed, one expert per card, generalist(s), the
    validation-perplexity sanity check, the document router, and the
    evaluation report on the test split. A second run reuses everything; a
    new card is added without retraining the others (`--rebuild`: retrain all).
    """
    from moe_experts.recipes import load_recipe
    from moe_experts.evaluation.options import EvalOptions
    from moe_experts.pipeline import quickstart as run
    from moe_experts.routing.doc_router import router_dir

    setup = load_setup(ctx)
    rec = load_recipe(recipe or repo_file("router_training/doc.yaml"))
    evaluation = EvalOptions(max_docs=eval_max_docs, suite_recipe=repo_file("eval/suites.yaml"))
    evaluation.check()
    click.echo(f"workspace: {setup.workspace.root}  preset: {setup.preset.name}  experts: {', '.join(setup.registry.names)}")
    result = run(setup, train_options(resume, restart, update=update), strict=strict, recipe=rec, evaluation=evaluation,
                 rebuild=rebuild)
    click.echo("\nstage                  seconds  status")
    for t in result.timings:
        click.echo(f"{t.stage:<22}{t.seconds:>8.1f}  {'built' if t.built else 'reused'}")
    click.echo(f"{'total':<22}{sum(t.seconds for t in result.timings):>8.1f}")
    print_corpora(setup)
    if result.sanity is not None:
        print_sanity(setup, result.sanity)
    if result.router is not None:
        click.echo("")
        print_doc_router_summary(result.router, router_dir(setup.workspace.root))
    if result.report is not None and result.report_dir is not None:
        click.echo("")
        print_report_summary(result.report, result.report_dir)
    click.echo('\nnext: moe-experts ask --text "What is the ICD-10 code for asthma?" --explain')
