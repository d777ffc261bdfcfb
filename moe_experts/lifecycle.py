"""Grow and prune the expert set without retraining the others (the Branch-Train-Merge lifecycle).

``add_expert``: a card new to a built workspace gets its own corpus (deduplicated against the built
ones, which do not change), is tokenized with the frozen tokenizer, and gets one expert trained on its
domain alone from the frozen seed, the router-weighted average of the existing experts, or the nearest
one; the document router is refitted (cached embeddings: only the new documents are embedded). Every
other expert's files stay as they were, byte for byte.

``remove_expert``: the expert leaves routing (its documents leave the index, the classifier is
refitted); its files stay unless asked otherwise; the token-level MoE is rebuilt on request, else
reported stale with the command that rebuilds it.

The cards folder is the expert set: an add writes the card into it, a remove moves the card to
``<cards>/removed/``. Both change the cards folder only after everything they build is ready, so an
interrupted add or remove leaves the old expert set as it was and usable.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from moe_experts.config import ExpertCard, ExpertRegistry, load_card
from moe_experts.data.build import (
    add_domains,
    base_domains,
    corpora_dir,
    corpora_state,
    domain_manifest,
    iter_documents,
    upgrade_corpora_manifest,
)
from moe_experts.data.tokenizer import build_token_streams, require_tokenizer
from moe_experts.errors import ConfigError, MissingArtifactError, StaleArtifactError
from moe_experts.modeling.checkpoints import load_pretrained
from moe_experts.modeling.generalist import generalist_note
from moe_experts.modeling.stages import GENERALIST, SEED, BranchInit, Setup, TrainOptions, model_manifest, train_experts
from moe_experts.workspace import MANIFEST, read_json, write_json_atomic

logger = logging.getLogger(__name__)

InitMethod = Literal["seed", "average", "nearest"]
REMOVED = "removed"  # <cards>/removed/: where a removed expert's card waits to be added again


@dataclass(frozen=True)
class AddResult:
    """What ``add_expert`` did."""

    expert: str
    domain: str
    card: Path  # the card in the cards folder
    kind: str  # "starter" (trained here) or "pretrained" (the card's own model)
    documents: dict[str, int]  # per split
    duplicates_of: dict[str, int]  # new documents dropped as copies of a built domain's, by that domain
    init: dict[str, Any] | None  # how the expert was initialised (its manifest's record); None: pretrained
    trained: bool  # False: an up-to-date expert was reused
    seconds: dict[str, float]  # corpus, tokens, init, expert, router, token router, total
    router: dict[str, Any]  # the refitted document router's manifest
    router_accuracy: float  # share of the new domain's validation documents routed to the new expert
    token_router: str  # what became of the token-level MoE
    generalist: str  # which generalist the reports compare against
    untouched: dict[str, str] = field(default_factory=dict)  # the other experts' weights ids, before and after


@dataclass(frozen=True)
class RemoveResult:
    """What ``remove_expert`` did."""

    expert: str
    card: Path  # where the card went (<cards>/removed/<name>.yaml)
    fallback: str  # the fallback expert now
    seconds: dict[str, float]
    router: dict[str, Any] | None  # the refitted document router's manifest (None: there was none)
    token_router: str
    deleted: tuple[str, ...]  # what --delete removed


# --------------------------------------------------------------------------- add


def add_expert(
    setup: Setup, card_path: Path, *, init: InitMethod = "seed", opts: TrainOptions = TrainOptions(),
    recipe: Any = None, token: bool = False, token_recipe: Any = None, strict: bool = False,
) -> AddResult:
    """Add the expert of ``card_path`` to the built workspace of ``setup`` without retraining the others.

    ``recipe``: the document router's (None: defaults); ``token``: rebuild the token-level MoE with the new
    expert's FFNs as one more expert per layer (``token_recipe``, None: defaults).
    """
    from moe_experts.pipeline import check_token_router
    from moe_experts.recipes import TokenRouterRecipe
    from moe_experts.routing.doc_router import router_dir, router_manifest
    from moe_experts.routing.train_doc import doc_router_status, fit_doc_router

    started = time.monotonic()
    recipe, unsupervised = router_recipe(setup, recipe)
    card = load_card(Path(card_path))
    old, new_registry, declared = grown_registry(setup.registry, card, Path(card_path))
    _require_built(setup, card)
    if card.model.kind == "pretrained":
        logger.info("%s: checking that its model loads (%s)", card.name, card.model.name_or_path)
        load_pretrained(card.model, card=card.name)  # a CheckpointError names the model and the fix first
    grown = replace(setup, registry=new_registry)
    before = _weights_ids(setup, old)
    seconds: dict[str, float] = {}

    t = time.monotonic()
    upgrade_corpora_manifest(setup.workspace, old, setup.preset.data)
    state = corpora_state(setup.workspace, new_registry, setup.preset.data)
    others = [d for d in state.stale_domains if d != card.domain]
    if state.base_stale and state.stale_domains == (card.domain,):
        raise StaleArtifactError(
            f"'{card.domain}' was built with the seed from another version of {card_path}",
            hint=f"restore the card as it was, or retrain everything with it: `moe-experts experts add {card_path} --rebuild`")
    if others:
        raise StaleArtifactError(
            f"the corpora of {', '.join(others)} are stale (their cards or the data settings changed since they were built)",
            hint="rebuild them first: `moe-experts quickstart --update`" if state.base_stale else
                 "rebuild them first: `moe-experts data build` (it rebuilds those domains alone)")
    if init != "seed" and card.domain in base_domains(read_json(corpora_dir(setup.workspace) / MANIFEST)):
        logger.warning("%s: its domain was built with the seed, so it branches from the seed as before; `init` %s "
                       "applies to domains added later", card.name, init)
        init = "seed"
    if card.domain in (*state.new_domains, *state.stale_domains):  # new, or its card changed since it was added
        add_domains(setup.workspace, new_registry, setup.preset.data, [card.domain], strict=strict)
    else:
        logger.info("%s: corpus up to date, reusing %s", card.domain, corpora_dir(setup.workspace) / card.domain)
    seconds["corpus"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    corpora = read_json(corpora_dir(setup.workspace) / MANIFEST)
    build_token_streams(setup.workspace, new_registry, require_tokenizer(setup.workspace, corpora, setup.preset))
    seconds["tokens"] = round(time.monotonic() - t, 1)

    trained, init_record = False, None
    if card.model.kind == "starter":
        t = time.monotonic()
        branch_init = _branch_init(setup, old, card, init, recipe) if init != "seed" else BranchInit()
        seconds["init"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        # a stale model of this name (left by an earlier set) is rebuilt: it is not part of the current set
        built = train_experts(grown, [card.domain], replace(opts, update=True), init=branch_init)[0]
        seconds["expert"] = round(time.monotonic() - t, 1)
        trained, init_record = built.trained, built.manifest.get("init", {"method": "seed"})

    t = time.monotonic()
    status, _ = doc_router_status(grown, recipe, unsupervised=unsupervised)
    router = None
    if status != "current" or opts.force:
        router = fit_doc_router(grown, recipe, unsupervised=unsupervised)
    seconds["router"] = round(time.monotonic() - t, 1)

    # the commit: the card joins the folder, then the refitted router replaces the old one
    target = declare_card(card, Path(card_path), new_registry, declared)
    if router is not None:
        router.save(router_dir(setup.workspace.root))
    manifest = router_manifest(router_dir(setup.workspace.root))
    assert manifest is not None

    t = time.monotonic()
    token_state = check_token_router(grown, token, token_recipe or TokenRouterRecipe(), opts)
    seconds["token router"] = round(time.monotonic() - t, 1)
    seconds["total"] = round(time.monotonic() - started, 1)

    after = _weights_ids(grown, old)
    changed = [n for n in before if before[n] != after.get(n)]
    if changed:  # cannot happen unless something else wrote them meanwhile; never report it as fine
        raise StaleArtifactError(f"the weights of {', '.join(changed)} changed during the add",
                                 hint="another process is writing this workspace; rerun the add when it is done")
    dm = domain_manifest(setup.workspace, card.domain)
    return AddResult(
        expert=card.name, domain=card.domain, card=target, kind=card.model.kind,
        documents={s: v["documents"] for s, v in dm["splits"].items()},
        duplicates_of=dict(dm["dedup"].get("duplicates_of") or {}), init=init_record, trained=trained,
        seconds=seconds, router=manifest, router_accuracy=domain_recall(manifest, card.domain),
        token_router=token_state, generalist=generalist_note(grown), untouched=after,
    )


def grown_registry(registry: ExpertRegistry, card: ExpertCard, path: Path) -> tuple[ExpertRegistry, ExpertRegistry, bool]:
    """(the set without the card, the set with it, whether the cards folder already declares it).

    Refused with the fix: a name another card has, a domain that already has an expert, a second fallback.
    """
    folder = Path(registry.source_dir)
    if card.name in registry.names:
        existing = registry.by_name(card.name)
        if existing != card:
            raise ConfigError(
                f"an expert named '{card.name}' already exists ({folder / (card.name + '.yaml')}) and {path} differs from it",
                hint="give the new card another name (its `name:` field and file name), or edit the existing card",
            )
        old = registry.model_copy(update={"cards": tuple(c for c in registry.cards if c.name != card.name)})
        if not any(c.fallback for c in old.cards):
            raise ConfigError(f"'{card.name}' is the fallback expert; it cannot be added to a set without it",
                              hint="build the workspace with `moe-experts quickstart`")
        return old, registry, True
    same = [c.name for c in registry.cards if c.domain == card.domain]
    if same:
        raise ConfigError(
            f"{path}: domain '{card.domain}' already has an expert, '{same[0]}' ({folder / (same[0] + '.yaml')}); "
            "one expert per domain",
            hint=f"extend {same[0]}'s card with the new sources, or give the new card another `domain:`",
        )
    if card.fallback:
        raise ConfigError(
            f"{path}: the card sets fallback: true, but '{registry.fallback.name}' is the fallback expert",
            hint="set fallback: false on the new card (move the fallback later with "
                 f"`moe-experts experts remove {registry.fallback.name} --fallback {card.name}`)",
        )
    grown = registry.model_copy(update={"cards": tuple(sorted((*registry.cards, card), key=lambda c: c.name))})
    return registry, grown, False


def _require_built(setup: Setup, card: ExpertCard) -> None:
    """An add grows a built workspace: its corpora, tokenizer and (for a starter expert) seed must exist."""
    ws = setup.workspace
    missing = [what for what, path in (("corpora", corpora_dir(ws) / MANIFEST), ("tokenizer", ws.tokenizer_dir / MANIFEST),
                                       ("seed", ws.model_dir(SEED) / MANIFEST))
               if not path.exists() and (what != "seed" or card.model.kind == "starter")]
    if missing:
        raise MissingArtifactError(
            f"workspace {ws.root} has no {', '.join(missing)} to add '{card.name}' to",
            hint="build the expert set first with `moe-experts quickstart` (a new card in the cards folder is then "
                 "added the same way)",
        )


def router_recipe(setup: Setup, recipe: Any) -> tuple[Any, bool]:
    """(recipe, unsupervised) for a refit: the one given, else the one the workspace's router was built with (so a
    custom router is refitted as it was built), else the defaults."""
    from moe_experts.recipes import DocRouterRecipe
    from moe_experts.routing.doc_router import router_dir, router_manifest

    built = router_manifest(router_dir(setup.workspace.root)) or {}
    unsupervised = built.get("mode") == "unsupervised"
    if recipe is not None:
        return recipe, unsupervised
    if built.get("recipe"):
        return DocRouterRecipe.model_validate(built["recipe"]), unsupervised
    return DocRouterRecipe(), unsupervised


def _weights_ids(setup: Setup, registry: ExpertRegistry) -> dict[str, str]:
    """Each built workspace model's weights hash, as its manifest records it (the seed, experts, generalists)."""
    from moe_experts.modeling.checkpoints import weights_id

    names = [SEED, GENERALIST, *[c.name for c in registry.starters]]
    return {n: weights_id(model_manifest(setup, n)) for n in names if (setup.workspace.model_dir(n) / MANIFEST).exists()}


def _branch_init(setup: Setup, old: ExpertRegistry, card: ExpertCard, method: InitMethod, recipe: Any) -> BranchInit:
    """BTM's initialisations: weights from the existing document router's posterior on the new domain."""
    posterior = router_posterior(setup, card.domain, recipe.max_train_documents_per_domain, expert=card.name)
    starters = {c.name for c in old.starters if (setup.workspace.model_dir(c.name) / MANIFEST).exists()}
    weights = {n: p for n, p in posterior.items() if n in starters}  # never the expert itself (a re-initialisation)
    if not weights:
        raise MissingArtifactError("`init` average and nearest start from the existing starter experts, and none is built",
                                   hint="use `init` seed, or build the experts first (`moe-experts quickstart`)")
    logger.info("%s: the router's mean posterior on its training documents: %s", card.domain,
                ", ".join(f"{n} {p:.3f}" for n, p in sorted(posterior.items(), key=lambda kv: -kv[1])))
    if method == "nearest":
        best = max(weights, key=lambda n: weights[n])
        return BranchInit("nearest", {best: 1.0})
    return BranchInit("average", weights)


def router_posterior(setup: Setup, domain: str, limit: int | None, expert: str | None = None) -> dict[str, float]:
    """The mean calibrated posterior of the workspace's document router over ``domain``'s training documents.

    The router may have been built for the cards without the new one, or (a re-initialisation) with it.
    """
    from moe_experts.routing.doc_router import DocRouter, router_dir
    from moe_experts.routing.train_doc import domain_sample, embed_cached

    try:
        router = DocRouter.load(router_dir(setup.workspace.root))  # its experts are checked below
    except (MissingArtifactError, StaleArtifactError) as exc:
        raise MissingArtifactError(
            f"`init` average and nearest weigh the existing experts by the document router, which cannot be used: "
            f"{exc.message}", hint="train it first (`moe-experts train-router`), or use `init` seed") from exc
    unknown = [n for n in router.experts if n not in setup.registry.names and n != (expert or domain)]
    if unknown:
        raise MissingArtifactError(
            f"`init` average and nearest weigh the existing experts by the document router, which routes to "
            f"{', '.join(unknown)}, experts the cards no longer declare",
            hint="refit it first (`moe-experts train-router`), or use `init` seed")
    ids, texts = domain_sample(setup, domain, "train", limit)
    vectors = embed_cached(setup, router.embedder, ids, texts, max_windows=router.max_windows)  # (N, D)
    probs, _, _ = router.posteriors(vectors, texts)  # (N, C)
    return {name: float(p) for name, p in zip(router.experts, probs.mean(axis=0))}


def declare_card(card: ExpertCard, path: Path, registry: ExpertRegistry, declared: bool) -> Path:
    """Write the card into the cards folder (atomically) unless it is there already; its path there."""
    folder = Path(registry.source_dir)
    target = folder / f"{card.name}.yaml"
    if declared:
        return target
    tmp = folder / f".tmp-{card.name}.yaml-{os.getpid()}"
    try:
        tmp.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {target}: {exc.strerror}", hint="make the cards folder writable") from exc
    if path.resolve().parent == (folder / REMOVED).resolve():
        path.unlink(missing_ok=True)  # added back: no longer waiting in removed/
    return target


def domain_recall(router_manifest: dict[str, Any], domain: str) -> float:
    """The share of ``domain``'s validation documents the router sent to its expert (abstentions count as misses)."""
    row = router_manifest["metrics"]["validation_routed"]["confusion"][router_manifest["domains"].index(domain)]
    return float(row[router_manifest["domains"].index(domain)]) / max(1, sum(row))


# --------------------------------------------------------------------------- remove


def remove_expert(
    setup: Setup, name: str, *, delete: bool = False, fallback: str | None = None, token: bool = False,
    recipe: Any = None, token_recipe: Any = None, opts: TrainOptions = TrainOptions(),
) -> RemoveResult:
    """Take expert ``name`` out of routing without retraining the others.

    ``fallback``: the expert that becomes the fallback (required to remove the fallback expert);
    ``delete``: also delete its model, corpus, token streams and cached embeddings; ``token``: rebuild the
    token-level MoE now (else it is reported stale).
    """
    from moe_experts.pipeline import check_token_router
    from moe_experts.recipes import TokenRouterRecipe
    from moe_experts.routing.doc_router import router_dir, router_manifest
    from moe_experts.routing.train_doc import fit_doc_router

    started = time.monotonic()
    registry = setup.registry
    folder = Path(registry.source_dir)
    parked = folder / REMOVED / f"{name}.yaml"
    if name not in registry.names and delete and parked.exists():  # removed earlier, files kept: delete them now
        card = load_card(parked)
        return RemoveResult(expert=name, card=parked, fallback=registry.fallback.name, seconds={"total": 0.0},
                            router=None, token_router="unchanged", deleted=_delete_files(setup, card))
    card = registry.by_name(name)  # an unknown name lists the known ones
    upgrade_corpora_manifest(setup.workspace, registry, setup.preset.data)
    remaining = [c for c in registry.cards if c.name != name]
    if len(remaining) < 2:
        raise ConfigError(f"removing '{name}' would leave {len(remaining)} expert; a mixture needs at least two",
                          hint="add another expert first (`moe-experts experts add CARD`)")
    if card.fallback:
        if fallback is None:
            raise ConfigError(
                f"'{name}' is the fallback expert (requests the router abstains on go to it); it cannot be removed "
                "while no other expert takes that role",
                hint=f"name the new fallback: `fallback` {remaining[0].name} (one of {', '.join(c.name for c in remaining)})",
            )
        if fallback not in [c.name for c in remaining]:
            raise ConfigError(f"`fallback` {fallback} is not one of the remaining experts",
                              hint=f"use one of {', '.join(c.name for c in remaining)}")
        remaining = [c.model_copy(update={"fallback": True}) if c.name == fallback else c for c in remaining]
    elif fallback is not None:
        raise ConfigError(f"'{name}' is not the fallback expert ('{registry.fallback.name}' is); `fallback` applies only "
                          "when removing it", hint="drop `fallback`")
    pruned = replace(setup, registry=registry.model_copy(update={"cards": tuple(remaining)}))
    recipe, unsupervised = router_recipe(setup, recipe)
    seconds: dict[str, float] = {}

    t = time.monotonic()
    had_router = router_manifest(router_dir(setup.workspace.root)) is not None
    router = fit_doc_router(pruned, recipe, unsupervised=unsupervised) if had_router else None
    seconds["router"] = round(time.monotonic() - t, 1)

    # the commit: the card leaves the folder (the new fallback's card says so), then the router is replaced
    moved = _retire_card(card, folder, fallback)
    if router is not None:
        router.save(router_dir(setup.workspace.root))

    t = time.monotonic()
    token_state = check_token_router(pruned, token, token_recipe or TokenRouterRecipe(), opts)
    seconds["token router"] = round(time.monotonic() - t, 1)
    deleted = _delete_files(pruned, card) if delete else ()
    seconds["total"] = round(time.monotonic() - started, 1)
    return RemoveResult(expert=name, card=moved, fallback=pruned.registry.fallback.name, seconds=seconds,
                        router=router.manifest if router is not None else None, token_router=token_state,
                        deleted=deleted)


def _retire_card(card: ExpertCard, folder: Path, fallback: str | None) -> Path:
    """Move the card to removed/ (and move the fallback): every file is written first, then renamed back to back."""
    source = folder / f"{card.name}.yaml"
    target = folder / REMOVED / f"{card.name}.yaml"
    text = source.read_text(encoding="utf-8")
    writes = [(target, set_fallback(text, False) if fallback is not None else text)]
    if fallback is not None:
        fb_path = folder / f"{fallback}.yaml"
        writes.append((fb_path, set_fallback(fb_path.read_text(encoding="utf-8"), True)))
    staged = []
    try:
        target.parent.mkdir(exist_ok=True)
        for path, content in writes:
            tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
            tmp.write_text(content, encoding="utf-8")
            staged.append((tmp, path))
        staged[0][0].replace(staged[0][1])
        source.unlink()
        for tmp, path in staged[1:]:
            tmp.replace(path)
    except OSError as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot move {source} to {target}: {exc.strerror}", hint="make the cards folder writable") from exc
    return target


def set_fallback(text: str, value: bool) -> str:
    """A card's YAML text with its top-level ``fallback:`` set to ``value`` (other lines and comments kept)."""
    import yaml

    lines = text.splitlines(keepends=True)
    out = [line for line in lines if not line.startswith("fallback:")]
    if value:
        at = next((i + 1 for i, line in enumerate(out) if line.startswith("description:")), len(out))
        out.insert(at, "fallback: true\n")
    new = "".join(out)
    if bool((yaml.safe_load(new) or {}).get("fallback", False)) != value:
        raise ConfigError("cannot set fallback in the card's YAML (is `fallback:` written in an unusual form?)",
                          hint="edit the cards by hand: exactly one sets fallback: true")
    return new


def _delete_files(setup: Setup, card: ExpertCard) -> tuple[str, ...]:
    """Delete a removed expert's model, checkpoints, corpus, token streams and cached embeddings."""
    from moe_experts.routing.train_doc import forget_embeddings

    ws = setup.workspace
    gone: list[str] = []
    doc_ids: set[str] = set()
    corpus = ws.corpus_dir(card.domain)
    if corpus.exists():
        for split in ("train", "val", "test"):
            doc_ids.update(d.id for d in iter_documents(ws, card.domain, split))  # type: ignore[arg-type]
    paths = [ws.model_dir(card.name), ws.checkpoints_dir(card.name), corpus,
             *sorted((ws.root / "tokens").glob(f"*/{card.domain}"))]
    if card.model.kind == "pretrained":
        paths = paths[1:]  # the card's own model is not the workspace's to delete
    top = corpora_dir(ws) / MANIFEST
    if top.exists():  # the manifest first: an interruption then leaves files no manifest points at, never the reverse
        m = read_json(top)
        m.setdefault("base_domains", list(m["domains"]))  # the base stays what it was: history, not data
        for key in ("domains", "cards", "added"):
            (m.get(key) or {}).pop(card.domain, None)
        write_json_atomic(top, m)
    for path in paths:
        if path.exists():
            shutil.rmtree(path)
            gone.append(str(path))
    dropped = forget_embeddings(setup, doc_ids)
    if dropped:
        gone.append(f"{dropped} cached embeddings")
    return tuple(gone)
