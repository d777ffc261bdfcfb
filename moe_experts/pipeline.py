"""The main job: build whatever is missing in the workspace, reuse the rest.

Stages, in order: corpora -> tokenizer (+ token streams) -> seed -> experts ->
generalist(s) -> sanity check -> document router -> evaluation report. A current artifact is reused; a stale one (built
from other inputs) stops the run with the command that rebuilds it, unless
``update`` asks to rebuild stale artifacts in place.

Also the steps behind the other commands, so that the CLI only parses and prints:
train a router of any registered kind (``train_router``), evaluate and write a
report (``evaluate``, ``report_spread``), answer through the document router (``ask_doc``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from moe_experts.recipes import DocRouterRecipe
from moe_experts.data.build import add_domains, build_corpora, corpora_dir, corpora_state, corpora_status, require_corpora
from moe_experts.data.tokenizer import build_token_streams, tokenizer_status, train_tokenizer
from moe_experts.errors import MissingArtifactError, StaleArtifactError
from moe_experts.modeling.sanity import SanityReport, run_sanity
from moe_experts.modeling.generalist import train_generalists
from moe_experts.modeling.stages import Setup, TrainOptions, parallel_branch_workers, train_experts, train_seed
from moe_experts.routing.kinds import check_options, router_kind
from moe_experts.workspace import MANIFEST, read_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageTiming:
    stage: str
    seconds: float
    built: bool


@dataclass
class QuickstartResult:
    timings: list[StageTiming] = field(default_factory=list)
    sanity: SanityReport | None = None
    router: dict[str, Any] | None = None  # the document router's manifest when trained in this run
    report: dict[str, Any] | None = None  # the evaluation report (written now, or reused)
    report_dir: Path | None = None


def ensure_corpora(setup: Setup, *, force: bool = False, update: bool = True, strict: bool = False,
                   rebuild: bool = False) -> bool:
    """Build what the cards need and the corpora lack; True if anything was built.

    Missing corpora (or stale ones with ``update``, or any with ``force`` or ``rebuild``) are built together;
    a card new to the workspace gets its own corpus, deduplicated against the built ones, which do not change
    (the Branch-Train-Merge path: nothing built before is retrained).
    """
    state = corpora_state(setup.workspace, setup.registry, setup.preset.data)
    if state.state == "current" and not (force or rebuild):
        logger.info("corpora: up to date, reusing %s", corpora_dir(setup.workspace))
        return False
    if state.state == "stale" and not (force or update or rebuild):
        raise StaleArtifactError(
            f"the corpora of {', '.join(state.stale_domains)} were built from other cards or data settings than the "
            "current ones",
            hint="run `moe-experts data build` (or `moe-experts quickstart --update`) to rebuild them",
        )
    if state.state in ("partial", "stale") and not state.base_stale and not (force or rebuild):
        # new cards, or edited cards of domains added after the seed: those alone, against the built rest
        again = [d for d in state.stale_domains if d not in state.new_domains]
        logger.info("corpora: %s (the other corpora stay as they are)", "; ".join(
            part for part in (f"adding {', '.join(state.new_domains)}" if state.new_domains else "",
                              f"rebuilding {', '.join(again)} (card changed)" if again else "") if part))
        add_domains(setup.workspace, setup.registry, setup.preset.data, [*state.new_domains, *again], strict=strict)
        return True
    logger.info("corpora: building every domain together (%s)", "forced" if state.state in ("current", "partial") else state.state)
    build_corpora(setup.workspace, setup.registry, setup.preset.data, strict=strict)
    return True


def ensure_tokenizer(setup: Setup, *, force: bool = False, update: bool = True) -> bool:
    """Train the tokenizer when needed, then make sure every token stream exists; True if trained."""
    corpora = require_corpora(setup.workspace, setup.registry, setup.preset.data)
    status = tokenizer_status(setup.workspace, corpora, setup.preset)
    built = False
    if status == "stale" and not (force or update):
        raise StaleArtifactError(
            "the tokenizer was trained on other corpora or settings than the current ones",
            hint="run `moe-experts data tokenizer` (or `moe-experts quickstart --update`) to retrain it",
        )
    if status != "current" or force:
        logger.info("tokenizer: training (%s)", "forced" if status == "current" else status)
        train_tokenizer(setup.workspace, setup.registry, setup.preset)
        built = True
    else:
        logger.info("tokenizer: up to date, reusing %s", setup.workspace.tokenizer_dir)
    build_token_streams(setup.workspace, setup.registry, read_json(setup.workspace.tokenizer_dir / MANIFEST))
    return built


def report_leftovers(ws: Any) -> list[Path]:
    """Remove what interrupted runs left in the workspace, saying what (every command that writes starts here)."""
    removed = ws.clean_stale_temporaries()
    if removed:
        logger.warning("removed %d temporary item(s) left by interrupted runs: %s", len(removed),
                       ", ".join(str(p.relative_to(ws.root)) for p in removed))
    return removed


def _timed(result: QuickstartResult, stage: str, fn: Callable[[], Any], built: Callable[[Any], bool]) -> Any:
    started = time.monotonic()
    out = fn()
    result.timings.append(StageTiming(stage, round(time.monotonic() - started, 1), built(out)))
    return out


def quickstart(
    setup: Setup, opts: TrainOptions, *, strict: bool = False, recipe: DocRouterRecipe | None = None,
    evaluation: Any = None, rebuild: bool = False,
) -> QuickstartResult:
    """Build every missing artifact for the starter experts, check them, train the router, write the report.

    A card new to a built workspace is added the Branch-Train-Merge way: its corpus, one expert branched
    from the frozen seed with the frozen tokenizer, the router refitted; nothing else retrains.
    ``rebuild``: build the corpora of every card together and retrain everything from them instead.
    ``evaluation`` is the ``EvalOptions`` of the final report (None: the evaluator's defaults).
    """
    report_leftovers(setup.workspace)
    result = QuickstartResult()
    flag: Callable[[bool], bool] = bool
    if rebuild:
        opts = replace(opts, update=True)  # everything built from the old corpora is stale after a full rebuild
    _timed(result, "corpora", lambda: ensure_corpora(setup, update=opts.update, strict=strict, rebuild=rebuild), flag)
    _timed(result, "tokenizer", lambda: ensure_tokenizer(setup, update=opts.update), flag)
    _timed(result, "seed", lambda: train_seed(setup, opts), lambda b: b.trained)
    workers = parallel_branch_workers(setup.preset, len(setup.registry.starters))
    if workers > 1:  # side by side: one stage
        _timed(result, f"experts ({workers} at a time)", lambda: train_experts(setup, None, opts),
               lambda bs: any(b.trained for b in bs))
    else:
        for card in setup.registry.starters:
            _timed(result, f"expert {card.name}", lambda c=card: train_experts(setup, [c.domain], opts),
                   lambda bs: any(b.trained for b in bs))
    _timed(result, "generalist", lambda: train_generalists(setup, opts), lambda bs: any(b.trained for b in bs))
    result.sanity = _timed(result, "sanity check", lambda: run_sanity(setup), lambda r: not r.reused)
    recipe = recipe or DocRouterRecipe()
    # a router built for another expert set (a card added or removed) is refitted: that is not a stale artifact
    # to protect, but one that no longer applies
    update = opts.update or doc_router_experts(setup) not in (None, setup.registry.names)
    result.router = _timed(result, "document router", lambda: ensure_doc_router(setup, recipe, update=update),
                           lambda m: m is not None)
    result.report_dir, result.report, _ = _timed(result, "evaluation report", lambda: ensure_report(setup, evaluation),
                                                 lambda r: r[2])
    return result


def doc_router_experts(setup: Setup) -> list[str] | None:
    """The experts the workspace's document router routes to (None: no router)."""
    from moe_experts.routing.doc_router import router_dir, router_manifest

    manifest = router_manifest(router_dir(setup.workspace.root))
    return None if manifest is None else list(manifest.get("experts", []))


def ensure_report(setup: Setup, evaluation: Any = None) -> tuple[Path, dict[str, Any], bool]:
    """(folder, report, written now): reuse the newest report computed from the same inputs, else evaluate."""
    from moe_experts.evaluation.report import write_report
    from moe_experts.evaluation.runner import EvalOptions, eval_inputs, latest_matching_report, load_report, run_eval

    evaluation = evaluation or EvalOptions()
    domains = list(evaluation.domains) if evaluation.domains else setup.registry.domains
    found = latest_matching_report(setup.workspace.reports_dir, eval_inputs(setup, evaluation, domains)["fingerprint"])
    if found is not None:
        logger.info("evaluation report: up to date, reusing %s", found)
        return found, load_report(found), False
    logger.info("evaluation report: evaluating every system on the test split")
    report = run_eval(setup, evaluation)
    return write_report(report, setup.workspace.reports_dir), report, True


def ensure_experts(setup: Setup, opts: TrainOptions) -> list[str]:
    """Build whatever the routers need and is missing (corpora, tokenizer, seed, starter experts); what was built."""
    built = []
    if ensure_corpora(setup, update=opts.update):
        built.append("corpora")
    if ensure_tokenizer(setup, update=opts.update):
        built.append("tokenizer")
    if setup.registry.starters:
        if train_seed(setup, opts).trained:
            built.append("seed")
        built += [b.name for b in train_experts(setup, None, opts) if b.trained]
    return built


def ensure_doc_router(
    setup: Setup, recipe: DocRouterRecipe, *, force: bool = False, update: bool = True, unsupervised: bool = False
) -> dict[str, Any] | None:
    """Train the document router when missing (or stale with ``update``, or always with ``force``); its manifest if trained."""
    return ensure_router(setup, recipe, force=force, update=update, unsupervised=unsupervised)


def ensure_router(
    setup: Setup, recipe: Any, opts: TrainOptions = TrainOptions(), *, force: bool = False, update: bool = True,
    **run: Any,
) -> dict[str, Any] | None:
    """Train the router of ``recipe.kind`` when missing (or stale with ``update``, or always with ``force``).

    Its manifest when trained now; None when an up-to-date router was reused. ``run`` holds the kind's
    run switches (``unsupervised`` for doc, ``allow_dead_experts`` for token).
    """
    kind = router_kind(recipe.kind)
    status = kind.status(setup, recipe, **run)
    if status.state == "current" and not force:
        logger.info("%s: up to date, reusing %s", kind.title, kind.folder(setup.workspace.root))
        return None
    if status.state == "stale" and not (force or update):
        raise StaleArtifactError(
            f"the {kind.title} is stale:\n  " + "\n  ".join(status.diffs),
            hint=f"run `moe-experts train-router --kind {kind.name} --force`"
            + (" (or `moe-experts quickstart --update`)" if kind.name == "doc" else ""),
        )
    why = "forced" if status.state == "current" else "; ".join([status.state, *status.diffs])
    logger.info("%s: training (%s)", kind.title, why)
    return kind.train(setup, recipe, opts, **run)


def check_token_router(setup: Setup, rebuild: bool, recipe: Any, opts: TrainOptions = TrainOptions()) -> str:
    """After the expert set changed: rebuild the token-level MoE (``rebuild``), or say whether it is now stale.

    A set that cannot be merged (an expert of another architecture or vocabulary) is reported with the
    reason, not raised: the document router serves such a set.
    """
    from moe_experts.errors import ConfigError, MoeExpertsError
    from moe_experts.routing.train_token import expert_set_change, token_router_dir

    folder = token_router_dir(setup.workspace.root)
    if rebuild:
        try:
            manifest = ensure_router(setup, recipe, opts, update=True)
        except ConfigError as exc:
            return f"not rebuilt: {exc.message}"
        except MoeExpertsError as exc:
            return f"not rebuilt: {exc.message} ({exc.hint})" if exc.hint else f"not rebuilt: {exc.message}"
        if manifest is None:
            return f"up to date ({folder})"
        return f"rebuilt with {', '.join(manifest['experts'])} ({folder})"
    if not (folder / MANIFEST).exists():
        return "none built (`moe-experts train-router --kind token` builds one)"
    change = expert_set_change(setup)
    if change is None:
        return f"up to date ({folder})"
    foreign = [c.name for c in setup.registry.cards if c.model.kind == "pretrained"]
    if foreign:  # the rebuild would be refused: say why instead of naming it
        return (f"stale: {change}; it cannot be rebuilt for this set, whose pretrained experts ({', '.join(foreign)}) "
                "cannot be merged into one sparse MoE; the document router serves them")
    return f"stale: {change}; rebuild it with `moe-experts train-router --kind token --force`"


@dataclass(frozen=True)
class RouterResult:
    """What ``train_router`` did."""

    kind: str
    folder: Path
    recipe: Any  # the recipe it was trained (or checked) against, overrides applied
    prerequisites: tuple[str, ...]  # what was missing and built first (corpora, tokenizer, seed, experts)
    manifest: dict[str, Any] | None  # the new router's manifest; None when an up-to-date one was reused

    @property
    def trained(self) -> bool:
        return self.manifest is not None


def missing_prerequisites(setup: Setup) -> list[str]:
    """What a router needs and the workspace lacks: the corpora, and the seed and starter experts' weights."""
    missing = []
    if corpora_status(setup.workspace, setup.registry, setup.preset.data) != "current":
        missing.append("corpora")
    starters = [c.name for c in setup.registry.starters]
    needed = ["seed", *starters] if starters else []  # user-supplied experts need no training
    return missing + [f"model {n}" for n in needed if not (setup.workspace.model_dir(n) / MANIFEST).exists()]


def train_router(
    setup: Setup, recipe: Any, opts: TrainOptions = TrainOptions(), *, force: bool = False, build: bool = True,
    **run: Any,
) -> RouterResult:
    """Train a router of ``recipe.kind`` over the experts (an up-to-date one is reused unless ``force``).

    Missing corpora or experts are built first (with ``opts.resume``), or, with ``build=False``, refused with
    the command that builds them. A stale router is retrained. ``run``: the kind's run switches.
    """
    kind = router_kind(recipe.kind)
    check_options(kind, run)
    missing = missing_prerequisites(setup)
    if missing and not build:
        raise MissingArtifactError(f"missing: {', '.join(missing)}", hint="run `moe-experts quickstart` first")
    built: list[str] = []
    if missing:
        logger.info("missing prerequisites (%s): building them first", ", ".join(missing))
        built = ensure_experts(setup, replace(opts, restart=False, force=False, update=True))
    manifest = ensure_router(setup, recipe, opts, force=force, update=True, **run)
    return RouterResult(kind.name, kind.folder(setup.workspace.root), recipe, tuple(built), manifest)


@dataclass(frozen=True)
class EvalResult:
    folder: Path  # reports/<name or stamp>/ with report.md, report.json, report.html and the plots
    report: dict[str, Any]  # what report.json holds


def evaluate(setup: Setup, opts: Any, name: str | None = None, out: Path | None = None) -> EvalResult:
    """Score every system on the test split with ``opts`` (an ``EvalOptions``) and write a new report.

    ``name`` is the report folder under reports/ (default: a UTC time stamp), or under ``out`` when given
    (then nothing is written into the workspace); a taken name is refused before the evaluation starts,
    and an existing report is never overwritten.
    """
    from moe_experts.evaluation.report import new_report_dir, write_report
    from moe_experts.evaluation.runner import run_eval

    reports = out if out is not None else setup.workspace.reports_dir
    new_report_dir(reports, name)  # refuse a taken name before an hour of work
    logger.info("evaluating on the test split of %s%s", ", ".join(opts.domains or setup.registry.domains),
                f" (at most {opts.max_docs} documents a domain)" if opts.max_docs else "")
    report = run_eval(setup, opts)
    return EvalResult(write_report(report, reports, name), report)


def report_spread(reports: Sequence[str], reports_dir: Path) -> dict[str, Any]:
    """The spread of the headline ratios over training seeds, from one report per seed.

    Each of ``reports`` is a report folder, a report.json, or a name under ``reports_dir``; every one is
    validated against the report schema first.
    """
    from moe_experts.evaluation.report import load_report, resolve_report, validate
    from moe_experts.evaluation.spread import seed_spread

    loaded = [load_report(resolve_report(r, reports_dir)) for r in reports]
    for report in loaded:
        validate(report)
    return seed_spread(loaded)


def ask_doc(
    setup: Setup, requests: Sequence[Any], *, top_k: int = 1, expert: str | None = None,
    overrides: dict[str, Any] | None = None, explain: bool = False,
) -> list[Any]:
    """Answer ``requests`` (``inference.ask.Request``) through the workspace's document router.

    The router is refused when it was built for other experts or another embedder; changed corpora
    are ``train-router``'s business, not this one's.
    """
    from moe_experts.inference.ask import ask, check_expert
    from moe_experts.routing.doc_router import DocRouter, router_dir

    check_expert(setup, expert)  # before loading anything
    router = DocRouter.load(router_dir(setup.workspace.root), setup.registry)
    router.warm_up()
    return ask(setup, router, requests, top_k=top_k, expert=expert, overrides=overrides, explain=explain)
