"""``moe-experts sanity``: does every expert win on its own domain?"""

from __future__ import annotations

import click

from moe_experts.cli.common import load_setup
from moe_experts.cli.printing import print_sanity

EXPERT_CHECK_FAILED = 7  # the exit code of ``sanity --strict`` when an expert loses at home


@click.command()
@click.option("--force", is_flag=True, help="Recompute even if these weights were already scored.")
@click.option("--strict", is_flag=True, help="Exit non-zero when an expert fails the check.")
@click.pass_context
def sanity(ctx: click.Context, force: bool, strict: bool) -> None:
    """Validation perplexity of every model on every domain; flags experts that do not win at home."""
    from moe_experts.modeling.sanity import run_sanity

    setup = load_setup(ctx)
    report = run_sanity(setup, force=force)
    print_sanity(setup, report)
    if strict and report.failures:
        ctx.exit(EXPERT_CHECK_FAILED)
