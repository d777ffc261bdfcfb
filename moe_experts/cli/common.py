"""What every command family shares: the workspace accessor, training options, list parsing."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from moe_experts.modeling.stages import Setup, TrainOptions


class State:
    """The global options, and the setup they describe once a command asks for it."""

    def __init__(self, workspace: str | None, preset: str, cards: str, seed: int | None = None) -> None:
        self.workspace_arg, self.preset_arg, self.cards_arg, self.seed = workspace, preset, cards, seed
        self._setup: Setup | None = None

    def setup(self, write: bool = True) -> Setup:
        """Load and validate the preset and cards, and open the workspace (once).

        ``write`` False: a reader, which needs an existing workspace and never writes to it (it may be
        read-only). A writer creates a missing workspace and first removes, and reports, what interrupted
        runs left in it.
        """
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
            ws.open(preset.name, preset.fingerprint(), create=write, write=write)
            if not write:
                from dataclasses import replace

                ws = replace(ws, read_only=True)
            if write:
                from moe_experts.pipeline import report_leftovers

                report_leftovers(ws)
            self._setup = Setup(workspace=ws, registry=registry, preset=preset)
        return self._setup


def state(ctx: click.Context) -> State:
    return ctx.find_object(State)


def load_setup(ctx: click.Context, write: bool = True) -> Setup:
    """The setup of the global options; ``write`` False for commands that only read the workspace."""
    return state(ctx).setup(write=write)


def train_options(resume: bool, restart: bool, force: bool = False, update: bool = False) -> TrainOptions:
    from moe_experts.modeling.stages import TrainOptions

    return TrainOptions(resume=resume, restart=restart, force=force, update=update)


resume_option = click.option("--resume", is_flag=True, help="Continue an interrupted training run from its last checkpoint.")
restart_option = click.option("--restart", is_flag=True, help="Discard an interrupted training run and start over.")


def domain_list(value: tuple[str, ...]) -> list[str] | None:
    """A repeatable ``A,B`` option as one list; None when not given."""
    names = [d.strip() for v in value for d in v.split(",") if d.strip()]
    return names or None


def csv_names(value: str | None) -> tuple[str, ...] | None:
    """An ``A,B`` option as a tuple; None when not given, an error when given empty."""
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter("give at least one name (comma-separated)")
    return items


def repo_file(path: str) -> Path | None:
    """A recipe file of the repository (router_training/..., eval/suites.yaml) when the command runs where it
    is; None means the library's built-in defaults. Only the CLI looks in the current folder."""
    found = Path(path)
    if found.is_file():
        return found
    logging.getLogger("moe_experts").info("%s is not in %s: using the built-in defaults (the recipe option "
                                          "chooses a file)", path, Path.cwd())
    return None


_SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


def _flag_names(command: click.Command, out: dict[str, str]) -> dict[str, str]:
    """Every long flag of the command tree, by the setting name it stands for (--top-k -> top_k)."""
    for param in command.params:
        for opt in getattr(param, "opts", ()):
            if opt.startswith("--"):
                out.setdefault(opt[2:].replace("-", "_"), opt)
    for sub in getattr(command, "commands", {}).values():
        _flag_names(sub, out)
    return out


def as_flags(message: str, root: click.Command | None = None) -> str:
    """A library message as the command line says it: each setting in backticks becomes its flag.

    The library names what a caller sets (`resume`, `top_k`) so that Python callers read their
    keywords; here those become --resume and --top-k. Backticked commands are left as they are.
    ``root``: the command tree whose flags count (default: the running command's root group).
    """
    if root is None:
        ctx = click.get_current_context(silent=True)
        if ctx is None:
            return message
        root = ctx.find_root().command
    flags = _flag_names(root, {})
    return _SETTING.sub(lambda m: flags.get(m.group(1), m.group(0)), message)
