"""The ``moe-experts`` command line: parse, load config, call the library, print.

Heavy libraries (torch, transformers, faiss) are imported inside the commands
that need them, so ``moe-experts --help`` stays instant. Library errors are
typed; ``main`` turns them into one message on stderr and a non-zero exit code.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from moe_experts import __version__
from moe_experts.errors import MoeExpertsError

if TYPE_CHECKING:
    from moe_experts.modeling.stages import Setup, TrainOptions

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


class _State:
    def __init__(self, workspace: str | None, preset: str, cards: str, seed: int | None = None) -> None:
        self.workspace_arg, self.preset_arg, self.cards_arg, self.seed = workspace, preset, cards, seed
        self._setup: Setup | None = None

    def setup(self) -> Setup:
        """Load and validate the preset and cards, and open the workspace (once)."""
        if self._setup is None:
            from moe_experts.config import load_preset, load_registry
            from moe_experts.modeling.stages import Setup
            from moe_experts.workspace import resolve_workspace

            preset = load_preset(self.preset_arg)
            name = preset.name
            if self.seed is not None and self.seed != preset.seed:
                # another training seed is another experiment: its own workspace by default
                preset, name = preset.model_copy(update={"seed": self.seed}), f"{preset.name}-seed{self.seed}"
            registry = load_registry(Path(self.cards_arg))
            ws = resolve_workspace(self.workspace_arg, name)
            ws.open(preset.name, preset.fingerprint())
            self._setup = Setup(workspace=ws, registry=registry, preset=preset)
        return self._setup


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
@click.option("--verbose", "-v", count=True, help="More log output (-vv includes transformers).")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, workspace: str | None, preset: str, cards: str, seed: int | None, verbose: int,
        quiet: bool) -> None:
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
    ctx.obj = _State(workspace, preset, cards, seed)


def _setup(ctx: click.Context) -> Setup:
    return ctx.find_object(_State).setup()


def _domains(value: tuple[str, ...]) -> list[str] | None:
    names = [d.strip() for v in value for d in v.split(",") if d.strip()]
    return names or None


def _train_options(resume: bool, restart: bool, force: bool = False, update: bool = False) -> TrainOptions:
    from moe_experts.modeling.stages import TrainOptions

    return TrainOptions(resume=resume, restart=restart, force=force, update=update)


resume_option = click.option("--resume", is_flag=True, help="Continue an interrupted training run from its last checkpoint.")
restart_option = click.option("--restart", is_flag=True, help="Discard an interrupted training run and start over.")


# --------------------------------------------------------------------------- quickstart


@cli.command()
@resume_option
@restart_option
@click.option("--update", is_flag=True, help="Rebuild stale artifacts (e.g. after editing a card) instead of stopping.")
@click.option("--strict", is_flag=True, help="Fail when any corpus source is missing, not only when a domain is too small.")
@click.option("--recipe", type=click.Path(path_type=Path, dir_okay=False), metavar="YAML",
              help="Document-router recipe [default: router_training/doc.yaml, else built-in defaults].")
@click.option("--eval-max-docs", type=int, default=300, show_default=True, metavar="N",
              help="Test documents a domain in the final report (a fixed sample; `moe-experts eval` scores all).")
@click.pass_context
def quickstart(ctx: click.Context, resume: bool, restart: bool, update: bool, strict: bool, recipe: Path | None,
               eval_max_docs: int) -> None:
    """Build everything missing, check the experts, train the router, write the report.

    Corpora, tokenizer, seed, one expert per card, generalist(s), the
    validation-perplexity sanity check, the document router, and the
    evaluation report on the test split. A second run reuses everything.
    """
    from moe_experts.config import load_recipe
    from moe_experts.evaluation.runner import EvalOptions
    from moe_experts.pipeline import quickstart as run

    setup = _setup(ctx)
    rec = load_recipe(recipe)
    evaluation = EvalOptions(max_docs=eval_max_docs)
    evaluation.check()
    click.echo(f"workspace: {setup.workspace.root}  preset: {setup.preset.name}  experts: {', '.join(setup.registry.names)}")
    result = run(setup, _train_options(resume, restart, update=update), strict=strict, recipe=rec, evaluation=evaluation)
    click.echo("\nstage                  seconds  status")
    for t in result.timings:
        click.echo(f"{t.stage:<22}{t.seconds:>8.1f}  {'built' if t.built else 'reused'}")
    click.echo(f"{'total':<22}{sum(t.seconds for t in result.timings):>8.1f}")
    _print_corpora(setup)
    if result.sanity is not None:
        _print_sanity(setup, result.sanity)
    if result.router is not None:
        from moe_experts.cli_router import print_router_summary
        from moe_experts.routing.doc_router import router_dir

        click.echo("")
        print_router_summary(result.router, router_dir(setup.workspace.root))
    if result.report is not None and result.report_dir is not None:
        from moe_experts.cli_eval import print_report_summary

        click.echo("")
        print_report_summary(result.report, result.report_dir)
    click.echo('\nnext: moe-experts ask --text "What is the ICD-10 code for asthma?" --explain')


# --------------------------------------------------------------------------- cards


@cli.group()
def cards() -> None:
    """List and validate expert cards."""


@cards.command("list")
@click.pass_context
def cards_list(ctx: click.Context) -> None:
    """Show every card in the cards folder."""
    from moe_experts.config import load_registry

    registry = load_registry(Path(ctx.find_object(_State).cards_arg))
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
        registry = load_registry(Path(ctx.find_object(_State).cards_arg))
        click.echo(f"ok: {len(registry.cards)} cards in {registry.source_dir}: {', '.join(registry.names)}")


# --------------------------------------------------------------------------- data


@cli.group()
def data() -> None:
    """Build and inspect the corpora and the tokenizer."""


@data.command("build")
@click.option("--force", is_flag=True, help="Rebuild even when the corpora are up to date.")
@click.option("--strict", is_flag=True, help="Fail when any corpus source is missing.")
@click.pass_context
def data_build(ctx: click.Context, force: bool, strict: bool) -> None:
    """Build every domain's corpus from its card's sources (dedup, split by content hash)."""
    from moe_experts.pipeline import ensure_corpora

    setup = _setup(ctx)
    ensure_corpora(setup, force=force, update=True, strict=strict)
    _print_corpora(setup)


@data.command("tokenizer")
@click.option("--force", is_flag=True, help="Retrain even when the tokenizer is up to date.")
@click.pass_context
def data_tokenizer(ctx: click.Context, force: bool) -> None:
    """Train the shared byte-level BPE on the training mixture, and tokenize every split."""
    from moe_experts.pipeline import ensure_tokenizer

    setup = _setup(ctx)
    ensure_tokenizer(setup, force=force, update=True)
    _print_corpora(setup)


@data.command("show")
@click.pass_context
def data_show(ctx: click.Context) -> None:
    """Print document, character and token counts per domain and split."""
    _print_corpora(_setup(ctx), require=True)


def _print_corpora(setup: Setup, require: bool = False) -> None:
    from moe_experts.data.build import corpora_dir, domain_manifest, require_corpora

    if require:
        require_corpora(setup.workspace, setup.registry, setup.preset.data)
    elif not (corpora_dir(setup.workspace) / "moe_experts.json").exists():
        return
    click.echo(f"\ncorpora ({corpora_dir(setup.workspace)})")
    click.echo(f"{'domain':<10}{'split':<7}{'docs':>9}{'chars':>13}{'tokens':>12}")
    for domain in setup.registry.domains:
        m = domain_manifest(setup.workspace, domain)
        tokens = m.get("tokens") or {}
        for split, s in m["splits"].items():
            tok = f"{tokens[split]:,}" if split in tokens else "-"
            click.echo(f"{domain:<10}{split:<7}{s['documents']:>9,}{s['characters']:>13,}{tok:>12}")
        missing = [src["fingerprint"]["kind"] for src in m["sources"] if not src["available"]]
        if missing:
            click.secho(f"{'':<10}missing source(s): {', '.join(missing)}", fg="yellow")


# --------------------------------------------------------------------------- training


@cli.group()
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

    built = train_seed(_setup(ctx), _train_options(resume, restart, force))
    click.echo(f"seed: {'trained' if built.trained else 'up to date'} ({_setup(ctx).workspace.model_dir('seed')})")


@train.command("experts")
@click.option("--domains", "-d", multiple=True, metavar="A,B", help="Only these domains (default: every starter card).")
@_training_command
def train_experts_cmd(ctx: click.Context, domains: tuple[str, ...], resume: bool, restart: bool, force: bool) -> None:
    """Branch the seed into one expert per starter card, each trained on its own domain."""
    from moe_experts.modeling.stages import train_experts

    setup = _setup(ctx)
    for built in train_experts(setup, _domains(domains), _train_options(resume, restart, force)):
        click.echo(f"{built.name}: {'trained' if built.trained else 'up to date'} ({setup.workspace.model_dir(built.name)})")


@train.command("generalist")
@_training_command
def train_generalist_cmd(ctx: click.Context, resume: bool, restart: bool, force: bool) -> None:
    """Train the compute-matched generalist (and the parameter-matched one if the preset asks)."""
    from moe_experts.modeling.stages import train_generalists

    setup = _setup(ctx)
    for built in train_generalists(setup, _train_options(resume, restart, force)):
        click.echo(f"{built.name}: {'trained' if built.trained else 'up to date'} ({setup.workspace.model_dir(built.name)})")


# --------------------------------------------------------------------------- sanity


@cli.command()
@click.option("--force", is_flag=True, help="Recompute even if these weights were already scored.")
@click.option("--strict", is_flag=True, help="Exit non-zero when an expert fails the check.")
@click.pass_context
def sanity(ctx: click.Context, force: bool, strict: bool) -> None:
    """Validation perplexity of every model on every domain; flags experts that do not win at home."""
    from moe_experts.modeling.sanity import run_sanity

    setup = _setup(ctx)
    report = run_sanity(setup, force=force)
    _print_sanity(setup, report)
    if strict and report.failures:
        ctx.exit(7)


def _print_sanity(setup: Setup, report: Any) -> None:
    click.echo("\n" + report.table() + "\n\n" + report.table("bits_per_byte"))
    click.echo(f"\nsaved: {setup.workspace.reports_dir / 'sanity'}")
    if report.failures:
        click.secho("\n" + "!" * 78, fg="red", bold=True, err=True)
        for failure in report.failures:
            click.secho(f"!! EXPERT CHECK FAILED: {failure}", fg="red", bold=True, err=True)
        click.secho("!" * 78, fg="red", bold=True, err=True)
    else:
        click.echo("every expert beats the seed and the generalist(s) on its own domain")


# --------------------------------------------------------------------------- entry point


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except MoeExpertsError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("\ninterrupted; training resumes from its last checkpoint with --resume", err=True)
        sys.exit(130)


# The router command family lives in its own module; importing it registers its commands on ``cli``.
from moe_experts import cli_router  # noqa: E402, F401
from moe_experts import cli_eval  # noqa: E402, F401
