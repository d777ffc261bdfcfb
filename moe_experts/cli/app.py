"""The ``moe-experts`` group: global options, logging, the entry point, and every command family."""

from __future__ import annotations

import logging
import os
import sys

import click

from moe_experts import __version__
from moe_experts.cli.ask import ask
from moe_experts.cli.cards import cards
from moe_experts.cli.common import State
from moe_experts.cli.common import as_flags as _as_flags
from moe_experts.cli.data import data
from moe_experts.cli.evaluate import eval_cmd
from moe_experts.cli.experts import experts
from moe_experts.cli.quickstart import quickstart
from moe_experts.cli.router import train_router
from moe_experts.cli.sanity import sanity
from moe_experts.cli.serve import serve
from moe_experts.cli.train import train
from moe_experts.errors import MoeExpertsError
from moe_experts.machine import COMPILE_ENV, ONLINE_ENV

DEFAULT_CARDS = "experts"
ENV_CARDS = "MOE_EXPERTS_CARDS"
ENV_PRESET = "MOE_EXPERTS_PRESET"
ENV_SEED = "MOE_EXPERTS_SEED"


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("moe_experts")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Keep third-party chatter out of the user's way unless asked for.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose > 1 else "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' per-file load/save bars are noise next to ours, for models this small.
    if verbose < 2:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="moe-experts")
@click.option("--workspace", "-w", metavar="PATH", help="Workspace folder [env MOE_EXPERTS_WORKSPACE; default runs/<preset>].")
@click.option("--preset", "-p", default=lambda: os.environ.get(ENV_PRESET, "tiny"), show_default="tiny",
              metavar="NAME|PATH", help="Model preset: micro, tiny (CPU), small (GPU), or a preset YAML [env MOE_EXPERTS_PRESET].")
@click.option("--cards", default=lambda: os.environ.get(ENV_CARDS, DEFAULT_CARDS), show_default=DEFAULT_CARDS,
              metavar="DIR", help="Folder of expert cards [env MOE_EXPERTS_CARDS].")
@click.option("--seed", type=int, default=lambda: int(os.environ[ENV_SEED]) if os.environ.get(ENV_SEED) else None,
              metavar="N", help="Training seed instead of the preset's; default workspace runs/<preset>-seed<N> "
              "[env MOE_EXPERTS_SEED]. For the spread over seeds: `moe-experts eval spread`.")
@click.option("--online", is_flag=True, help="Let loading download models and datasets from the Hugging Face Hub "
              "(default: the local cache only) [env MOE_EXPERTS_ONLINE=1].")
@click.option("--no-compile", is_flag=True, help="Train eager: no torch.compile, whatever the preset's "
              "speed.compile says [env MOE_EXPERTS_COMPILE=0].")
@click.option("--verbose", "-v", count=True, help="More log output (-vv includes transformers).")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, workspace: str | None, preset: str, cards: str, seed: int | None, online: bool,
        no_compile: bool, verbose: int, quiet: bool) -> None:
    """Domain-expert language models behind one learned router.

    \b
    First run:   moe-experts quickstart
    Then see:    moe-experts data show, moe-experts sanity
    """
    if int(os.environ.get("RANK", "0")) != 0:
        # Under torchrun every process runs this command; only rank 0 reports.
        quiet = True
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    _configure_logging(verbose, quiet)
    if online:
        # the one switch every hub-touching call reads (moe_experts.machine.online); torchrun's workers inherit it
        os.environ[ONLINE_ENV] = "1"
    if no_compile:
        os.environ[COMPILE_ENV] = "0"  # read where each phase resolves its speed settings; torchrun's workers inherit it
    ctx.obj = State(workspace, preset, cards, seed)


for _command in (quickstart, cards, experts, data, train, sanity, train_router, ask, eval_cmd, serve):
    cli.add_command(_command)


def main() -> None:
    try:
        # without standalone mode click returns a command's ``ctx.exit(code)`` instead of exiting with it
        code = cli.main(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except MoeExpertsError as exc:
        click.secho(f"error: {as_flags(str(exc))}", fg="red", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("\ninterrupted; training resumes from its last checkpoint with --resume", err=True)
        sys.exit(130)


def as_flags(message: str) -> str:
    """A library message with each backticked setting shown as this command line's flag (see ``common.as_flags``)."""
    return _as_flags(message, cli)
