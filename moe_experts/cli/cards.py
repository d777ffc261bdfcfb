"""``moe-experts cards``: list and validate expert cards."""

from __future__ import annotations

from pathlib import Path

import click

from moe_experts.cli.common import state


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
@click.pass_context
def cards_validate(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Validate card files (default: the whole cards folder, including cross-card rules)."""
    from moe_experts.config import load_card, load_registry

    if paths:
        for path in paths:
            card = load_card(path)
            click.echo(f"ok: {path} ({card.name}, {len(card.corpus.sources)} source(s))")
    else:
        registry = load_registry(Path(state(ctx).cards_arg))
        click.echo(f"ok: {len(registry.cards)} cards in {registry.source_dir}: {', '.join(registry.names)}")
