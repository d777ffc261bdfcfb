"""``moe-experts data``: build and inspect the corpora and the tokenizer."""

from __future__ import annotations

import click

from moe_experts.cli.common import load_setup
from moe_experts.cli.printing import print_corpora


@click.group()
def data() -> None:
    """Build and inspect the corpora and the tokenizer."""


@data.command("build")
@click.option("--force", is_flag=True, help="Rebuild even when the corpora are up to date.")
@click.option("--strict", is_flag=True, help="Fail when any corpus source is missing.")
@click.pass_context
def data_build(ctx: click.Context, force: bool, strict: bool) -> None:
    """Build every domain's corpus from its card's sources (dedup, split by content hash)."""
    from moe_experts.pipeline import ensure_corpora

    setup = load_setup(ctx)
    ensure_corpora(setup, force=force, update=True, strict=strict)
    print_corpora(setup)


@data.command("tokenizer")
@click.option("--force", is_flag=True, help="Retrain even when the tokenizer is up to date.")
@click.pass_context
def data_tokenizer(ctx: click.Context, force: bool) -> None:
    """Train the shared byte-level BPE on the training mixture, and tokenize every split."""
    from moe_experts.pipeline import ensure_tokenizer

    setup = load_setup(ctx)
    ensure_tokenizer(setup, force=force, update=True)
    print_corpora(setup)


@data.command("show")
@click.pass_context
def data_show(ctx: click.Context) -> None:
    """Print document, character and token counts per domain and split."""
    print_corpora(load_setup(ctx, write=False), require=True)
