"""``moe-experts cards``: list and validate expert cards."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from moe_experts.cli.common import state

if TYPE_CHECKING:
    from moe_experts.config import ExpertCard
    from moe_experts.errors import MoeExpertsError


@click.group()
def cards() -> None:
    """List and validate expert cards."""


@cards.command("list")
@click.pass_context
def cards_list(ctx: click.Context) -> None:
    """Show every card in the cards folder."""
    from moe_experts.config import load_registry

    registry = load_registry(Path(state(ctx).cards_arg))
    for c in registry.cards:
        model = "starter" if c.model.kind == "starter" else c.model.name_or_path
        sources = ", ".join(s.kind for s in c.corpus.sources)
        flag = "  (fallback)" if c.fallback else ""
        click.echo(f"{c.name:<10} domain={c.domain:<10} model={model:<10} sources={sources}{flag}\n    {c.description}")


@cards.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--strict", is_flag=True, help="Fail when a card's model or hf_dataset source is neither a local folder "
              "nor in the local Hugging Face cache (exit 5 for a model, 3 for a dataset).")
@click.pass_context
def cards_validate(ctx: click.Context, paths: tuple[Path, ...], strict: bool) -> None:
    """Validate card files (default: the whole cards folder, including cross-card rules).

    Also reports every hub id a card names that this machine cannot load offline.
    """
    from moe_experts.config import load_card, load_registry

    if paths:
        checked = []
        for path in paths:
            card = load_card(path)
            checked.append(card)
            click.echo(f"ok: {path} ({card.name}, {len(card.corpus.sources)} source(s))")
    else:
        registry = load_registry(Path(state(ctx).cards_arg))
        checked = list(registry.cards)
        click.echo(f"ok: {len(registry.cards)} cards in {registry.source_dir}: {', '.join(registry.names)}")
    missing = _not_on_this_machine(checked)
    for problem in missing:
        click.secho(f"warning: {problem}", fg="yellow", err=True)
    if strict and missing:
        from moe_experts.errors import CheckpointError, SourceUnavailableError

        kind = CheckpointError if any(isinstance(m, CheckpointError) for m in missing) else SourceUnavailableError
        raise kind(f"{len(missing)} model(s) or dataset(s) named by the cards are not on this machine (listed above)",
                   hint="fetch each as its warning says, or validate without --strict")


def _not_on_this_machine(cards: list[ExpertCard]) -> list[MoeExpertsError]:
    """The typed error each hub id of these cards would raise when loaded offline (none for local or cached ones)."""
    from moe_experts.modeling.checkpoints import missing_pretrained

    found: list[MoeExpertsError] = []
    for card in cards:
        model = missing_pretrained(card.model, card=card.name)
        if model is not None:
            found.append(model)
        for source in card.corpus.sources:
            if source.kind == "hf_dataset":
                from moe_experts.sources.hf_dataset import missing_dataset

                dataset = missing_dataset(source)
                if dataset is not None:
                    found.append(type(dataset)(f"card '{card.name}': {dataset.message}", hint=dataset.hint))
    return found
