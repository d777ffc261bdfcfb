"""``moe-experts experts``: grow and prune the expert set without retraining the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from moe_experts.cli.common import load_setup, repo_file, restart_option, resume_option, train_options


@click.group()
def experts() -> None:
    """Grow and prune the expert set without retraining the others (Branch-Train-Merge)."""


def _recipes(recipe: Path | None) -> tuple[Any, Any]:
    """The document router's recipe (None: refit with the one the workspace's router was built with), the token one's."""
    from moe_experts.routing.kinds import router_kind

    doc = router_kind("doc").load_recipe(recipe) if recipe is not None else None
    token = router_kind("token").load_recipe(repo_file("router_training/token.yaml"))
    return doc, token


_recipe_option = click.option("--recipe", type=click.Path(path_type=Path, dir_okay=False), metavar="YAML",
                              help="Document-router recipe [default: the one the workspace's router was built with].")
_token_option = click.option("--token", is_flag=True,
                             help="Also rebuild the token-level MoE now (router_training/token.yaml); by default it is "
                                  "reported stale with the command that rebuilds it.")


@experts.command("add")
@click.argument("card", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--init", "init", type=click.Choice(["seed", "average", "nearest"]), default="seed", show_default=True,
              help="Start the new expert from the seed, from the average of the existing experts weighted by the "
                   "document router's posterior on its training documents (Branch-Train-Merge), or from the "
                   "nearest expert.")
@_token_option
@click.option("--rebuild", is_flag=True,
              help="Instead: build every card's corpus together and retrain the tokenizer, the seed, every expert "
                   "and the generalist, then report (the full rebuild).")
@_recipe_option
@click.option("--strict", is_flag=True, help="Fail when any of the card's corpus sources is missing.")
@click.option("--force", is_flag=True, help="Retrain the new expert and refit the router even when up to date.")
@resume_option
@restart_option
@click.pass_context
def experts_add(ctx: click.Context, card: Path, init: str, token: bool, rebuild: bool, recipe: Path | None,
                strict: bool, force: bool, resume: bool, restart: bool) -> None:
    """Add the expert of CARD (a card YAML) to the built workspace; the other experts stay untouched.

    \b
    Builds its corpus (deduplicated against the built ones, which do not change),
    tokenizes it with the frozen tokenizer, trains one expert on it alone (a
    card with a pretrained model is checked to load instead), refits the document
    router, and writes the card into the cards folder.
    """
    from moe_experts.lifecycle import add_expert

    setup = load_setup(ctx)
    opts = train_options(resume, restart, force)
    doc_recipe, token_recipe = _recipes(recipe)
    if rebuild:
        from moe_experts.routing.kinds import router_kind

        _full_rebuild(ctx, setup, card, opts, doc_recipe or router_kind("doc").load_recipe(
            repo_file("router_training/doc.yaml")), strict)
        return
    click.echo(f"adding {card} to {setup.workspace.root} (experts now: {', '.join(setup.registry.names)})")
    r = add_expert(setup, card, init=init, opts=opts, recipe=doc_recipe, token=token, token_recipe=token_recipe,  # type: ignore[arg-type]
                   strict=strict)
    s = r.seconds
    docs = " / ".join(f"{r.documents[k]:,}" for k in ("train", "val", "test"))
    copies = sum(r.duplicates_of.values())
    click.echo(f"\nadded '{r.expert}' (domain {r.domain}, {r.kind} model) in {s['total']:.1f} s; card: {r.card}")
    click.echo(f"  corpus        {docs} documents (train / val / test); {copies:,} dropped as copies of built domains"
               + (f" ({', '.join(f'{d} {n:,}' for d, n in r.duplicates_of.items())})" if copies else "")
               + f"   {s['corpus']:.1f} s")
    click.echo(f"  tokens        with the frozen tokenizer   {s['tokens']:.1f} s")
    if r.init is not None:
        how = r.init["method"] + ("" if r.init["method"] == "seed" else
                                  ": " + ", ".join(f"{n} {w:.3f}" for n, w in r.init.get("weights", {}).items()))
        click.echo(f"  expert        {'trained' if r.trained else 'up to date, reused'}; initialised from {how}   "
                   f"{s.get('init', 0) + s.get('expert', 0):.1f} s")
    acc = r.router_accuracy
    n_val = sum(r.router["metrics"]["validation_routed"]["confusion"][r.router["domains"].index(r.domain)])
    click.echo(f"  router        refitted over {len(r.router['experts'])} experts; '{r.expert}' gets "
               f"{acc:.4f} of its validation documents ({round(acc * n_val)}/{n_val}); all: accuracy "
               f"{r.router['metrics']['validation_routed']['accuracy']:.4f}   {s['router']:.1f} s")
    click.echo(f"  token router  {r.token_router}")
    click.echo(f"  generalist    {r.generalist}")
    click.echo(f"  untouched     {', '.join(f'{n} {w}' for n, w in r.untouched.items())} (weights ids)")
    click.echo("\nnext: moe-experts eval, then moe-experts eval compare <the report before> <the new one>")


def _full_rebuild(ctx: click.Context, setup: Any, card: Path, opts: Any, recipe: Any, strict: bool) -> None:
    from dataclasses import replace

    from moe_experts.config import load_card
    from moe_experts.lifecycle import declare_card, grown_registry
    from moe_experts.pipeline import quickstart

    new = load_card(card)
    _, registry, declared = grown_registry(setup.registry, new, card)
    click.echo(f"full rebuild of {setup.workspace.root} with {', '.join(registry.names)}")
    result = quickstart(replace(setup, registry=registry), opts, strict=strict, recipe=recipe, rebuild=True)
    declare_card(new, card, registry, declared)  # after the build: a card that fails it stays out of the set
    click.echo("\nstage                  seconds  status")
    for t in result.timings:
        click.echo(f"{t.stage:<22}{t.seconds:>8.1f}  {'built' if t.built else 'reused'}")
    click.echo(f"{'total':<22}{sum(t.seconds for t in result.timings):>8.1f}")
    if result.report_dir is not None:
        click.echo(f"\nreport: {result.report_dir}/report.md")


@experts.command("remove")
@click.argument("name")
@click.option("--fallback", metavar="NAME", help="Make this expert the fallback (required to remove the fallback expert).")
@click.option("--delete", is_flag=True, help="Also delete its model, corpus, token streams and cached embeddings "
                                             "(kept by default, so that adding it back costs nothing).")
@_token_option
@_recipe_option
@click.pass_context
def experts_remove(ctx: click.Context, name: str, fallback: str | None, delete: bool, token: bool,
                   recipe: Path | None) -> None:
    """Take expert NAME out of routing without retraining the others.

    Its documents leave the router's index and the classifier is refitted; its
    card moves to <cards>/removed/ (add it back with `moe-experts experts add`).
    The seed and the experts branched from it keep what they learned from its
    domain; for a model that never saw it, rebuild (`quickstart --rebuild`).
    """
    from moe_experts.lifecycle import remove_expert

    setup = load_setup(ctx)
    doc_recipe, token_recipe = _recipes(recipe)
    r = remove_expert(setup, name, delete=delete, fallback=fallback, token=token, recipe=doc_recipe,
                      token_recipe=token_recipe)
    click.echo(f"removed '{r.expert}' in {r.seconds['total']:.1f} s; its card is now {r.card}")
    if r.router is not None:
        click.echo(f"  router        refitted over {', '.join(r.router['experts'])} (fallback {r.fallback}); "
                   f"validation accuracy {r.router['metrics']['validation_routed']['accuracy']:.4f}   "
                   f"{r.seconds['router']:.1f} s")
    click.echo(f"  token router  {r.token_router}")
    click.echo("  files         " + ("deleted: " + "; ".join(r.deleted) if r.deleted else
                                     "kept (`--delete` removes them)"))
    click.echo(f"\nadd it back: moe-experts experts add {r.card}")


@experts.command("list")
@click.pass_context
def experts_list(ctx: click.Context) -> None:
    """The expert set: each card, whether its domain was built with the seed or added later, and its state."""
    from moe_experts.data.build import base_domains, corpora_dir
    from moe_experts.routing.doc_router import router_dir, router_manifest
    from moe_experts.workspace import MANIFEST, read_json

    setup = load_setup(ctx, write=False)
    ws = setup.workspace
    top = corpora_dir(ws) / MANIFEST
    manifest = read_json(top) if top.exists() else {"domains": {}}
    base = base_domains(manifest) if manifest["domains"] else []
    routed = (router_manifest(router_dir(ws.root)) or {}).get("experts", [])
    click.echo(f"{'expert':<12}{'domain':<12}{'origin':<9}{'model':<28}{'routed':<7}")
    for c in setup.registry.cards:
        origin = "base" if c.domain in base else ("added" if c.domain in manifest["domains"] else "new")
        if c.model.kind == "pretrained":
            model = str(c.model.name_or_path)[:27]
        else:
            model = "trained" if (ws.model_dir(c.name) / MANIFEST).exists() else "not trained"
        flag = " (fallback)" if c.fallback else ""
        click.echo(f"{c.name:<12}{c.domain:<12}{origin:<9}{model:<28}{'yes' if c.name in routed else 'no':<7}{flag}")
    gone = [n for n in routed if n not in setup.registry.names]
    if gone:
        click.echo(f"the router still routes to {', '.join(gone)}, whose card is gone: `moe-experts train-router` refits it")
