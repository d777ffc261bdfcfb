"""The public Python API: one object over a workspace, typed results.

    from moe_experts import MoE

    moe = MoE.open(cards="experts", preset="tiny")       # workspace: runs/tiny
    moe.build()                                          # corpora, tokenizer, seed, experts, generalist, router
    [d.expert for d in moe.route(["What is the ICD-10 code for asthma?"])]
    moe.generate("def read_lines(path):", max_new_tokens=16)[0].text
    moe.evaluate(max_docs=50).ratio_to_generalist["doc-top1"]

Everything the CLI does goes through the same library calls; the CLI only
parses flags and prints. Nothing here reads files relative to the current
folder: recipes are objects or paths you pass, or the built-in defaults.
Heavy libraries load on first use, not on import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moe_experts.config import ExpertRegistry, Preset
    from moe_experts.recipes import DocRouterRecipe
    from moe_experts.inference.ask import Answer
    from moe_experts.lifecycle import AddResult, RemoveResult
    from moe_experts.modeling.stages import Setup
    from moe_experts.routing.doc_router import DocRouter, RoutingDecision
    from moe_experts.workspace import Workspace


@dataclass(frozen=True)
class Target:
    name: str
    system: str
    domain: str
    value: float
    threshold: float
    met: bool


@dataclass(frozen=True)
class Report:
    """An evaluation report: the headline numbers typed, the whole report.json in ``data``."""

    name: str
    folder: Path | None  # where report.md / .json / .html were written (None: not written)
    domains: tuple[str, ...]
    systems: tuple[str, ...]
    bits_per_byte: Mapping[str, Mapping[str, float]]  # system -> domain -> bits per byte (test split)
    ratio_to_generalist: Mapping[str, Mapping[str, float]]  # system -> domain -> ratio of bits per byte
    targets: tuple[Target, ...]
    data: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], folder: Path | None = None) -> Report:
        vs = data["lm"]["vs_baseline"]
        return cls(
            name=data["name"], folder=folder, domains=tuple(data["domains"]), systems=tuple(data["systems"]),
            bits_per_byte=data["lm"]["bits_per_byte"],
            ratio_to_generalist={s: {d: v["ratio"] for d, v in per.items()} for s, per in vs.items()},
            targets=tuple(Target(t["name"], t["system"], t["domain"], t["value"], t["threshold"], t["met"])
                          for t in data["targets"]),
            data=data,
        )


@dataclass(frozen=True)
class BuildResult:
    """What ``build`` did: each stage's seconds and whether it was built now, the sanity failures, the report."""

    stages: tuple[tuple[str, float, bool], ...]  # (stage, seconds, built now)
    sanity_failures: tuple[str, ...]
    report: Report | None


@dataclass(frozen=True)
class RouterInfo:
    kind: str
    folder: Path
    trained: bool  # False: an up-to-date router was reused
    manifest: Mapping[str, Any] = field(repr=False)


class MoE:
    """Domain experts behind a learned router, in one workspace. Open it with ``MoE.open``."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self._doc_router: DocRouter | None = None
        self._pool: Any = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, cards: str | Path | ExpertRegistry = "experts", preset: str | Path | Preset = "tiny",
             workspace: str | Path | None = None, *, seed: int | None = None) -> MoE:
        """A workspace for these cards and this preset (a shipped name, a YAML path, or a ``Preset``).

        ``workspace`` defaults to ``runs/<preset>`` (``runs/<preset>-seed<N>`` for another training
        ``seed``); it is created when missing and refused when it was built for another preset.
        """
        from moe_experts.config import ExpertRegistry, Preset, load_preset, load_registry
        from moe_experts.modeling.stages import Setup
        from moe_experts.workspace import resolve_workspace

        loaded = preset if isinstance(preset, Preset) else load_preset(str(preset))
        name = loaded.name
        if seed is not None and seed != loaded.seed:
            loaded, name = loaded.model_copy(update={"seed": seed}), f"{loaded.name}-seed{seed}"
        registry = cards if isinstance(cards, ExpertRegistry) else load_registry(Path(cards))
        ws = resolve_workspace(None if workspace is None else str(workspace), name)
        ws.open(loaded.name, loaded.fingerprint())
        return cls(Setup(workspace=ws, registry=registry, preset=loaded))

    @property
    def workspace(self) -> Workspace:
        return self.setup.workspace

    @property
    def experts(self) -> list[str]:
        return self.setup.registry.names

    def __repr__(self) -> str:
        return f"MoE(preset={self.setup.preset.name!r}, experts={self.experts}, workspace={str(self.workspace.root)!r})"

    # ------------------------------------------------------------------ building
    def build(self, *, update: bool = False, resume: bool = False, restart: bool = False, strict: bool = False,
              rebuild: bool = False, doc_router: DocRouterRecipe | Path | None = None,
              eval_max_docs: int | None = 300) -> BuildResult:
        """Build whatever is missing (corpora, tokenizer, seed, experts, generalist, document router), reuse the rest.

        A card new to a built workspace is added alone (as ``add_expert`` does); ``rebuild`` builds every
        corpus together and retrains everything instead. It ends with the evaluation report on the test split
        (``eval_max_docs`` documents a domain; reused when one was computed from the same inputs): what
        ``moe-experts quickstart`` does.
        """
        from moe_experts.evaluation.options import EvalOptions
        from moe_experts.modeling.stages import TrainOptions
        from moe_experts.pipeline import quickstart

        result = quickstart(self.setup, TrainOptions(resume=resume, restart=restart, update=update), strict=strict,
                            recipe=_recipe("doc", doc_router), evaluation=EvalOptions(max_docs=eval_max_docs),
                            rebuild=rebuild)
        self._doc_router = None  # a retrained router is loaded afresh
        report = Report.from_json(result.report, result.report_dir) if result.report is not None else None
        return BuildResult(stages=tuple((t.stage, t.seconds, t.built) for t in result.timings),
                           sanity_failures=tuple(result.sanity.failures) if result.sanity else (), report=report)

    def train_router(self, kind: str = "doc", recipe: Any = None, *, force: bool = False, resume: bool = False,
                     restart: bool = False, **run: Any) -> RouterInfo:
        """Train a router of a registered kind (``doc``, ``token``); an up-to-date one is reused unless ``force``.

        ``recipe``: the kind's recipe object, a YAML path, or None for the built-in defaults. Missing
        corpora and experts are built first. ``run``: the kind's switches (``unsupervised=True`` for doc,
        ``allow_dead_experts=True`` for token).
        """
        from moe_experts.modeling.stages import TrainOptions
        from moe_experts.pipeline import train_router
        from moe_experts.workspace import MANIFEST, read_json

        result = train_router(self.setup, _recipe(kind, recipe), TrainOptions(resume=resume, restart=restart),
                              force=force, **run)
        if kind == "doc":
            self._doc_router = None  # a retrained router is loaded afresh
        manifest = result.manifest
        if manifest is None:
            if kind == "doc":
                from moe_experts.routing.doc_router import router_manifest

                manifest = router_manifest(result.folder)
            else:
                manifest = read_json(result.folder / MANIFEST)
        return RouterInfo(kind, result.folder, result.trained, manifest)

    # ------------------------------------------------------------------ growing and pruning
    def add_expert(self, card: str | Path, *, init: str = "seed", token: bool = False, force: bool = False,
                   resume: bool = False, restart: bool = False, doc_router: DocRouterRecipe | Path | None = None,
                   token_router: Any = None) -> AddResult:
        """Add the expert of ``card`` (a card YAML) to this built workspace, leaving every other expert untouched.

        Its corpus (deduplicated against the built ones), one expert trained on it alone from ``init``
        (``seed``, ``average`` of the experts weighted by the router's posterior, or ``nearest``), the document
        router refitted, the card written into the cards folder; ``token`` rebuilds the token-level MoE too.
        What ``moe-experts experts add`` does.
        """
        from moe_experts.lifecycle import add_expert
        from moe_experts.modeling.stages import TrainOptions

        result = add_expert(self.setup, Path(card), init=init, opts=TrainOptions(resume=resume, restart=restart,  # type: ignore[arg-type]
                            force=force), recipe=_recipe("doc", doc_router), token=token,
                            token_recipe=_recipe("token", token_router))
        self._reopen()
        return result

    def remove_expert(self, name: str, *, fallback: str | None = None, delete: bool = False, token: bool = False,
                      doc_router: DocRouterRecipe | Path | None = None, token_router: Any = None) -> RemoveResult:
        """Take expert ``name`` out of routing (its card moves to <cards>/removed/); the others stay as they are.

        ``fallback`` names the new fallback when removing the fallback expert; ``delete`` also deletes its
        model, corpus, token streams and cached embeddings. What ``moe-experts experts remove`` does.
        """
        from moe_experts.lifecycle import remove_expert

        result = remove_expert(self.setup, name, delete=delete, fallback=fallback, token=token,
                               recipe=_recipe("doc", doc_router), token_recipe=_recipe("token", token_router))
        self._reopen()
        return result

    def _reopen(self) -> None:
        """Read the cards folder again (an add or remove changed it); drop what was loaded for the old set."""
        from dataclasses import replace

        from moe_experts.config import load_registry

        self.setup = replace(self.setup, registry=load_registry(Path(self.setup.registry.source_dir)))
        self._doc_router, self._pool = None, None

    # ------------------------------------------------------------------ serving
    def router(self) -> DocRouter:
        """The document router, loaded once (refused when built for other experts or another embedder)."""
        if self._doc_router is None:
            from moe_experts.routing.doc_router import DocRouter, router_dir

            self._doc_router = DocRouter.load(router_dir(self.workspace.root), self.setup.registry)
        return self._doc_router

    def route(self, texts: str | Sequence[str], *, explain: bool = False) -> list[RoutingDecision]:
        """Routing decisions (expert, posterior, whether it abstained and why), one per text."""
        from moe_experts.inference.ask import check_request

        batch = [texts] if isinstance(texts, str) else list(texts)
        for i, text in enumerate(batch):
            check_request(text, where=f"text {i}")
        decisions, _ = self.router().route(batch, explain=explain)
        return decisions

    def generate(self, requests: str | Sequence[str], *, top_k: int = 1, expert: str | None = None,
                 max_new_tokens: int | None = None, temperature: float | None = None, seed: int | None = None,
                 explain: bool = False) -> list[Answer]:
        """Route each request, then answer it with its expert (or the posterior-weighted top-k mixture).

        Settings left None come from each expert's card. Every ``Answer`` carries the decision beside the text.
        """
        from moe_experts.inference.ask import ExpertPool, Request, ask, check_request

        batch = [requests] if isinstance(requests, str) else list(requests)
        reqs = [Request(text=check_request(t, where=f"request {i}"), id=str(i)) for i, t in enumerate(batch)]
        if self._pool is None:
            self._pool = ExpertPool(self.setup)
        overrides = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
        return ask(self.setup, self.router(), reqs, top_k=top_k, expert=expert, overrides=overrides, explain=explain,
                   pool=self._pool)

    # ------------------------------------------------------------------ evaluating
    def evaluate(self, *, domains: Sequence[str] | None = None, systems: Sequence[str] | None = None,
                 max_docs: int | None = None, top_k: int = 2, resamples: int = 1000, seed: int = 0,
                 suites: bool = True, timing: bool = True, write: bool = True, name: str | None = None) -> Report:
        """Score every system on the test split; with ``write`` the report goes to reports/<stamp or name>/."""
        from moe_experts.evaluation.options import EvalOptions
        from moe_experts.evaluation.runner import run_eval
        from moe_experts.pipeline import evaluate

        opts = EvalOptions(domains=tuple(domains) if domains else None, systems=tuple(systems) if systems else None,
                           max_docs=max_docs, top_k=top_k, resamples=resamples, seed=seed, suites=suites,
                           speed_prompts=4 if timing else 0, latency_requests=50 if timing else 0)
        if not write:
            return Report.from_json(run_eval(self.setup, opts))
        result = evaluate(self.setup, opts, name)
        return Report.from_json(result.report, result.folder)


def _recipe(kind: str, recipe: Any) -> Any:
    """A router kind's recipe: the object given, a YAML path, or (None) the built-in defaults."""
    from moe_experts.routing.kinds import router_kind

    spec = router_kind(kind)
    if recipe is None:
        return spec.recipe_model()
    return recipe if isinstance(recipe, spec.recipe_model) else spec.load_recipe(Path(recipe))
