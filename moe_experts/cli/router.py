"""``moe-experts train-router``: train a router of any registered kind over the experts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from moe_experts.cli.common import load_setup, repo_file, restart_option, resume_option, train_options
from moe_experts.cli.printing import print_doc_router_summary, print_token_router_summary
from moe_experts.routing.kinds import DEFAULT_ROUTER_KIND, ROUTER_KINDS

# How a freshly trained router is summed up, by kind; a kind without one prints its folder.
SUMMARIES: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "doc": print_doc_router_summary,
    "token": print_token_router_summary,
}


@click.command("train-router")
@click.option("--kind", type=click.Choice(list(ROUTER_KINDS)), default=DEFAULT_ROUTER_KIND, show_default=True,
              help="; ".join(f"{k.name}: {k.summary}" for k in ROUTER_KINDS.values()) + ".")
@click.option("--recipe", type=click.Path(path_type=Path, dir_okay=False), metavar="YAML",
              help="Router recipe [default: router_training/<kind>.yaml, else built-in defaults].")
@click.option("--unsupervised", is_flag=True, help="doc: no domain labels: FAISS k-means clusters mapped to experts (c-BTM).")
@click.option("--merge-rest", type=click.Choice(["average", "seed"]),
              help="token: attention, norms and embeddings averaged over the experts or taken from the seed [recipe].")
@click.option("--gate-init", type=click.Choice(["hidden", "random"]),
              help="token: gates from each expert's mean hidden state on its domain, or random [recipe].")
@click.option("--train", "train_mode", type=click.Choice(["gates", "all"]),
              help="token: train the gates only (all else frozen) or every weight [recipe].")
@click.option("--include-seed", is_flag=True, default=None, help="token: add the seed's FFN as one more expert [recipe].")
@click.option("--allow-dead-experts", is_flag=True, help="token: save even when an expert gets under the recipe's dead_expert_share (5% by default) of a layer's tokens.")
@click.option("--force", is_flag=True, help="Retrain even when the router is up to date.")
@click.option("--no-build", is_flag=True, help="Stop instead of building missing corpora or experts first.")
@resume_option
@restart_option
@click.pass_context
def train_router(ctx: click.Context, kind: str, recipe: Path | None, unsupervised: bool, merge_rest: str | None,
                 gate_init: str | None, train_mode: str | None, include_seed: bool | None, allow_dead_experts: bool,
                 force: bool, no_build: bool, resume: bool, restart: bool) -> None:
    """Train a router over the experts: document-level (routers/doc/) or token-level (routers/token/)."""
    from moe_experts.pipeline import train_router as run
    from moe_experts.routing.kinds import check_options

    setup = load_setup(ctx)
    router = ROUTER_KINDS[kind]
    given = {"unsupervised": unsupervised, "merge_rest": merge_rest, "gate_init": gate_init, "train": train_mode,
             "include_seed": include_seed, "allow_dead_experts": allow_dead_experts}
    given = {k: v for k, v in given.items() if v is not None and v is not False}  # flags left out
    check_options(router, given)
    rec = router.load_recipe(recipe or repo_file(f"router_training/{router.default_recipe_file}"),
                             **{k: v for k, v in given.items() if k in router.recipe_options})
    result = run(setup, rec, train_options(resume, restart), force=force, build=not no_build,
                 **{k: v for k, v in given.items() if k in router.run_options})
    if result.manifest is None:
        click.echo(f"{router.title}: up to date ({result.folder}); --force retrains it")
        return
    summary = SUMMARIES.get(kind)
    if summary is None:
        click.echo(f"{router.title}: {result.folder}")
    else:
        summary(result.manifest, result.folder)
