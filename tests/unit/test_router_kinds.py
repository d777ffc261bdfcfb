"""Router kinds as a registry: what each kind declares, the options it takes, and the generic train-or-reuse step."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from moe_experts.config import StrictModel
from moe_experts.recipes import RECIPES_DIR
from moe_experts.errors import ConfigError, StaleArtifactError
from moe_experts.routing.kinds import DEFAULT_ROUTER_KIND, ROUTER_KINDS, RouterKind, RouterStatus, check_options, router_kind

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(ROUTER_KINDS))
def test_each_kind_agrees_with_its_recipe_and_shipped_file(name: str, monkeypatch: pytest.MonkeyPatch):
    kind = ROUTER_KINDS[name]
    assert kind.name == name and kind.recipe_model().kind == name  # the recipe's `kind` names its registry entry
    assert set(kind.recipe_options) <= set(kind.recipe_model.model_fields)  # every override is a recipe field
    monkeypatch.chdir(REPO)
    assert (RECIPES_DIR / kind.default_recipe_file).exists()
    assert kind.load_recipe(RECIPES_DIR / kind.default_recipe_file).kind == name  # the shipped file is of this kind
    assert kind.load_recipe(None) == kind.recipe_model()  # None: the built-in defaults, never a file in the cwd


def test_default_kind_is_registered():
    assert DEFAULT_ROUTER_KIND in ROUTER_KINDS


def test_overrides_are_applied_and_validated():
    token = ROUTER_KINDS["token"]
    assert token.load_recipe(None, merge_rest="seed", include_seed=True).merge_rest == "seed"
    with pytest.raises(ConfigError, match="`train`"):
        token.load_recipe(None, train="everything")


def test_options_of_another_kind_are_refused_with_the_flag_and_the_kind():
    check_options(ROUTER_KINDS["doc"], {"unsupervised": True})  # its own: fine
    with pytest.raises(ConfigError, match="`merge_rest`, `train`; such settings only apply to `kind` token") as exc:
        check_options(ROUTER_KINDS["doc"], {"merge_rest": "seed", "train": "all"})
    assert "use `kind` token" in str(exc.value)
    with pytest.raises(ConfigError, match="only apply to `kind` doc"):
        check_options(ROUTER_KINDS["token"], {"unsupervised": True})
    with pytest.raises(ConfigError, match="(?s)unknown router kind 'mystery'.*doc, token"):
        router_kind("mystery")


# --------------------------------------------------------------------------- a kind added by one entry


class FakeRecipe(StrictModel):
    kind: Literal["fake"] = "fake"
    size: int = 1


class FakeKind(RouterKind):
    """A router kind that only records what it was asked to do."""

    name = "fake"
    title = "fake router"
    summary = "a kind registered by a test"
    default_recipe_file = "fake.yaml"
    run_options = ("loud",)
    recipe_model = FakeRecipe  # type: ignore[assignment]

    def __init__(self, state: str) -> None:
        self.state, self.trained = state, []

    def folder(self, workspace_root: Path) -> Path:
        return workspace_root / "routers" / self.name

    def status(self, setup: Any, recipe: Any, *, loud: bool = False) -> RouterStatus:
        return RouterStatus(self.state, ("size changed",) if self.state == "stale" else ())  # type: ignore[arg-type]

    def train(self, setup: Any, recipe: Any, opts: Any, *, loud: bool = False) -> dict[str, Any]:
        self.trained.append((recipe.size, loud))
        return {"name": "fake", "size": recipe.size}


@pytest.mark.parametrize("state, force, update, trains", [
    ("missing", False, False, True),
    ("current", False, True, False),
    ("current", True, False, True),
    ("stale", False, True, True),
])
def test_ensure_router_dispatches_on_the_recipe_kind(monkeypatch, tmp_path, state, force, update, trains):
    from moe_experts.pipeline import ensure_router

    fake = FakeKind(state)
    monkeypatch.setitem(ROUTER_KINDS, "fake", fake)
    setup = SimpleNamespace(workspace=SimpleNamespace(root=tmp_path))
    manifest = ensure_router(setup, FakeRecipe(size=3), force=force, update=update, loud=True)
    assert fake.trained == ([(3, True)] if trains else [])
    assert (manifest is not None) == trains


def test_a_stale_router_without_update_names_the_command(monkeypatch, tmp_path):
    from moe_experts.pipeline import ensure_router

    monkeypatch.setitem(ROUTER_KINDS, "fake", FakeKind("stale"))
    setup = SimpleNamespace(workspace=SimpleNamespace(root=tmp_path))
    with pytest.raises(StaleArtifactError, match="size changed") as exc:
        ensure_router(setup, FakeRecipe(), update=False)
    assert "train-router --kind fake --force" in str(exc.value)
