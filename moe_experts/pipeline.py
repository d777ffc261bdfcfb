"""The main job: build whatever is missing in the workspace, reuse the rest.

Stages, in order: corpora -> tokenizer (+ token streams) -> seed -> experts ->
generalist(s) -> sanity check -> document router -> evaluation report. A current artifact is reused; a stale one (built
from other inputs) stops the run with the command that rebuilds it, unless
``update`` asks to rebuild stale artifacts in place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moe_experts.config import DocRouterRecipe
from moe_experts.data.build import build_corpora, corpora_dir, corpora_status, require_corpora
from moe_experts.data.tokenizer import build_token_streams, tokenizer_status, train_tokenizer
from moe_experts.errors import StaleArtifactError
from moe_experts.modeling.sanity import SanityReport, run_sanity
from moe_experts.modeling.stages import Setup, TrainOptions, train_experts, train_generalists, train_seed
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


def ensure_corpora(setup: Setup, *, force: bool = False, update: bool = True, strict: bool = False) -> bool:
    """Build the corpora when missing (or stale with ``update``, or always with ``force``); True if built."""
    status = corpora_status(setup.workspace, setup.registry, setup.preset.data)
    if status == "current" and not force:
        logger.info("corpora: up to date, reusing %s", corpora_dir(setup.workspace))
        return False
    if status == "stale" and not (force or update):
        raise StaleArtifactError(
            "corpora were built from other cards or data settings than the current ones",
            hint="run `moe-experts data build` (or `moe-experts quickstart --update`) to rebuild them",
        )
    logger.info("corpora: building (%s)", "forced" if status == "current" else status)
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


def _timed(result: QuickstartResult, stage: str, fn: Callable[[], Any], built: Callable[[Any], bool]) -> Any:
    started = time.monotonic()
    out = fn()
    result.timings.append(StageTiming(stage, round(time.monotonic() - started, 1), built(out)))
    return out


def quickstart(
    setup: Setup, opts: TrainOptions, *, strict: bool = False, recipe: DocRouterRecipe | None = None,
    evaluation: Any = None,
) -> QuickstartResult:
    """Build every missing artifact for the starter experts, check them, train the router, write the report.

    ``evaluation`` is the ``EvalOptions`` of the final report (None: the evaluator's defaults).
    """
    removed = setup.workspace.clean_stale_temporaries()
    if removed:
        logger.info("removed %d temporary folder(s) left by an interrupted build", removed)
    result = QuickstartResult()
    flag: Callable[[bool], bool] = bool
    _timed(result, "corpora", lambda: ensure_corpora(setup, update=opts.update, strict=strict), flag)
    _timed(result, "tokenizer", lambda: ensure_tokenizer(setup, update=opts.update), flag)
    _timed(result, "seed", lambda: train_seed(setup, opts), lambda b: b.trained)
    for card in setup.registry.starters:
        _timed(result, f"expert {card.name}", lambda c=card: train_experts(setup, [c.domain], opts),
               lambda bs: any(b.trained for b in bs))
    _timed(result, "generalist", lambda: train_generalists(setup, opts), lambda bs: any(b.trained for b in bs))
    result.sanity = _timed(result, "sanity check", lambda: run_sanity(setup), lambda r: not r.reused)
    recipe = recipe or DocRouterRecipe()
    result.router = _timed(result, "document router", lambda: ensure_doc_router(setup, recipe, update=opts.update),
                           lambda m: m is not None)
    result.report_dir, result.report, _ = _timed(result, "evaluation report", lambda: ensure_report(setup, evaluation),
                                                 lambda r: r[2])
    return result


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
    from moe_experts.routing.train_doc import doc_router_status, train_doc_router

    status, diffs = doc_router_status(setup, recipe, unsupervised=unsupervised)
    if status == "current" and not force:
        logger.info("document router: up to date, reusing %s", setup.workspace.root / "routers" / "doc")
        return None
    if status == "stale" and not (force or update):
        raise StaleArtifactError(
            "the document router is stale:\n  " + "\n  ".join(diffs),
            hint="run `moe-experts train-router --force` (or `moe-experts quickstart --update`)",
        )
    logger.info("document router: training (%s)", "forced" if status == "current" else "; ".join([status, *diffs]))
    return train_doc_router(setup, recipe, unsupervised=unsupervised)
