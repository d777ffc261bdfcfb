"""``moe-experts train``: the starter models (Branch-Train-Merge) and the generalist baselines."""

from __future__ import annotations

from typing import Any

import click

from moe_experts.cli.common import domain_list, load_setup, restart_option, resume_option, train_options


@click.group()
def train() -> None:
    """Train the starter models (Branch-Train-Merge) and the generalist baselines."""


def _training_command(fn: Any) -> Any:
    for option in (
        click.option("--force", is_flag=True, help="Retrain even when the model is up to date."),
        restart_option,
        resume_option,
    ):
        fn = option(fn)
    return click.pass_context(fn)


@train.command("seed")
@_training_command
def train_seed_cmd(ctx: click.Context, resume: bool, restart: bool, force: bool) -> None:
    """Pretrain the seed model on the mixture of every domain."""
    from moe_experts.modeling.stages import train_seed

    setup = load_setup(ctx)
    built = train_seed(setup, train_options(resume, restart, force))
    click.echo(f"seed: {'trained' if built.trained else 'up to date'} ({setup.workspace.model_dir('seed')})")


@train.command("experts")
@click.option("--domains", "-d", multiple=True, metavar="A,B", help="Only these domains (default: every starter card).")
@click.option("--parallel", type=click.IntRange(min=1), default=None, metavar="N",
              help="Train N branches side by side, one process each [default: the preset's speed.parallel_branches: "
              "up to 4 on one GPU, one per GPU with several, 1 on CPU].")
@_training_command
def train_experts_cmd(ctx: click.Context, domains: tuple[str, ...], parallel: int | None, resume: bool, restart: bool,
                      force: bool) -> None:
    """Branch the seed into one expert per starter card, each trained on its own domain."""
    from moe_experts.modeling.stages import train_experts

    setup = load_setup(ctx)
    for built in train_experts(setup, domain_list(domains), train_options(resume, restart, force), parallel=parallel):
        click.echo(f"{built.name}: {'trained' if built.trained else 'up to date'} ({setup.workspace.model_dir(built.name)})")


@train.command("generalist")
@_training_command
def train_generalist_cmd(ctx: click.Context, resume: bool, restart: bool, force: bool) -> None:
    """Train the compute-matched generalist (and the parameter-matched one if the preset asks).

    It learns every card's domain and is matched to the tokens the seed and every expert consumed; after
    `moe-experts experts add` this retrains the generalist that had not seen the new domain.
    """
    from moe_experts.modeling.generalist import train_generalists

    setup = load_setup(ctx)
    # an explicit request: a generalist built for another expert set is retrained, not refused
    opts = train_options(resume, restart, force, update=True)
    for built in train_generalists(setup, opts, domains=setup.registry.domains):
        click.echo(f"{built.name}: {'trained' if built.trained else 'up to date'} ({setup.workspace.model_dir(built.name)})")
