"""Router kinds and their explicit registry, the way corpus sources are registered.

A router kind knows its recipe (the pydantic model whose ``kind`` names it), where
its recipe file lives by default, where it writes its router, whether that router
is current, and how to train it. ``train-router --kind`` offers exactly the kinds
listed in ``ROUTER_KINDS``: adding one means a module with its ``RouterKind`` and
an entry below. The two kinds here are thin adapters over ``train_doc`` and
``train_token``, which hold their training code.

Importing this module is cheap: the training code (numpy, torch, faiss) and even
the config models load inside the methods, so ``moe-experts --help`` stays instant.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from moe_experts.errors import ConfigError

if TYPE_CHECKING:
    from moe_experts.config import StrictModel
    from moe_experts.recipes import DocRouterRecipe, TokenRouterRecipe
    from moe_experts.modeling.stages import Setup, TrainOptions


@dataclass(frozen=True)
class RouterStatus:
    """Whether a kind's router in the workspace matches the recipe and the workspace's inputs."""

    state: Literal["missing", "current", "stale"]
    diffs: tuple[str, ...] = ()  # what differs, when stale


class RouterKind(ABC):
    """One kind of router: its recipe, its folder, its status check and its training."""

    name: ClassVar[str]  # the ``--kind`` value and the recipe's ``kind``
    title: ClassVar[str]  # how messages name it: "document router"
    summary: ClassVar[str]  # one line for ``train-router --help``
    default_recipe_file: ClassVar[str]  # under router_training/
    recipe_options: ClassVar[tuple[str, ...]] = ()  # recipe fields a train-router flag may override
    run_options: ClassVar[tuple[str, ...]] = ()  # keyword switches of ``status`` and ``train``

    @property
    @abstractmethod
    def recipe_model(self) -> type[StrictModel]:
        """The pydantic recipe class, imported on use so that the CLI's start-up does not load pydantic."""

    @abstractmethod
    def folder(self, workspace_root: Path) -> Path:
        """Where this kind's router lives in a workspace."""

    @abstractmethod
    def status(self, setup: Setup, recipe: Any, **run: Any) -> RouterStatus:
        """The router in the workspace against ``recipe`` and the workspace's current inputs."""

    @abstractmethod
    def train(self, setup: Setup, recipe: Any, opts: TrainOptions, **run: Any) -> dict[str, Any]:
        """Train the router, write it to ``folder`` atomically; its manifest."""

    @property
    def options(self) -> tuple[str, ...]:
        return (*self.recipe_options, *self.run_options)

    def load_recipe(self, path: Path | None = None, **overrides: Any) -> Any:
        """The recipe from ``path`` (None: the built-in defaults), with ``overrides`` of its
        ``recipe_options`` applied and validated."""
        from pydantic import ValidationError

        from moe_experts.config import format_validation_error, load_yaml_model

        recipe = load_yaml_model(path, self.recipe_model)
        if not overrides:
            return recipe
        try:
            return self.recipe_model.model_validate({**recipe.model_dump(), **overrides})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(f"{self.name} router recipe with {_flags(overrides)}", exc)) from exc


class DocRouterKind(RouterKind):
    name = "doc"
    title = "document router"
    summary = "document-level (embeddings, FAISS, classifier)"
    default_recipe_file = "doc.yaml"
    run_options = ("unsupervised",)

    @property
    def recipe_model(self) -> type[DocRouterRecipe]:
        from moe_experts.recipes import DocRouterRecipe

        return DocRouterRecipe

    def folder(self, workspace_root: Path) -> Path:
        from moe_experts.routing.doc_router import router_dir

        return router_dir(workspace_root)

    def status(self, setup: Setup, recipe: DocRouterRecipe, *, unsupervised: bool = False) -> RouterStatus:
        from moe_experts.routing.train_doc import doc_router_status

        state, diffs = doc_router_status(setup, recipe, unsupervised=unsupervised)
        return RouterStatus(state, tuple(diffs))  # type: ignore[arg-type]

    def train(self, setup: Setup, recipe: DocRouterRecipe, opts: TrainOptions, *,
              unsupervised: bool = False) -> dict[str, Any]:
        from moe_experts.routing.train_doc import train_doc_router

        # embedding and fitting take minutes, not hours: no checkpoints, so ``opts`` has nothing to resume
        return train_doc_router(setup, recipe, unsupervised=unsupervised)


class TokenRouterKind(RouterKind):
    name = "token"
    title = "token router"
    summary = "merge the experts into a sparse MoE and train its gates (Branch-Train-MiX)"
    default_recipe_file = "token.yaml"
    recipe_options = ("merge_rest", "gate_init", "train", "include_seed")
    run_options = ("allow_dead_experts",)

    @property
    def recipe_model(self) -> type[TokenRouterRecipe]:
        from moe_experts.recipes import TokenRouterRecipe

        return TokenRouterRecipe

    def folder(self, workspace_root: Path) -> Path:
        from moe_experts.routing.train_token import token_router_dir

        return token_router_dir(workspace_root)

    def status(self, setup: Setup, recipe: TokenRouterRecipe, *, allow_dead_experts: bool = False) -> RouterStatus:
        from moe_experts.routing.train_token import token_router_status

        state, diffs = token_router_status(setup, recipe)  # the health gate does not change what is built
        return RouterStatus(state, tuple(diffs))  # type: ignore[arg-type]

    def train(self, setup: Setup, recipe: TokenRouterRecipe, opts: TrainOptions, *,
              allow_dead_experts: bool = False) -> dict[str, Any]:
        from moe_experts.routing.train_token import train_token_router

        return train_token_router(setup, recipe, opts, allow_dead_experts=allow_dead_experts)


ROUTER_KINDS: dict[str, RouterKind] = {k.name: k for k in (DocRouterKind(), TokenRouterKind())}
DEFAULT_ROUTER_KIND = "doc"


def router_kind(name: str) -> RouterKind:
    """The registered kind called ``name``; an unknown name is a ConfigError listing the known ones."""
    try:
        return ROUTER_KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown router kind '{name}'", hint=f"use one of: {', '.join(ROUTER_KINDS)}") from None


def check_options(kind: RouterKind, options: Mapping[str, Any]) -> None:
    """Refuse options (recipe overrides or run switches) that belong to another kind, naming them."""
    foreign = [o for o in options if o not in kind.options]
    if not foreign:
        return
    owners = [k.name for k in ROUTER_KINDS.values() if foreign[0] in k.options]
    if not owners:
        raise ConfigError(f"`kind` {kind.name} takes no {_flags(foreign)}; no router kind does", hint=f"drop {_flags(foreign)}")
    raise ConfigError(f"`kind` {kind.name} takes no {_flags(foreign)}; such settings only apply to `kind` {owners[0]}",
                      hint=f"use `kind` {owners[0]}, or drop {_flags(foreign)}")


def _flags(options: Mapping[str, Any] | list[str]) -> str:
    return ", ".join(f"`{o}`" for o in options)
