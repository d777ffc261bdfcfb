"""The generalist baselines: dense models trained on the mixture, compared against every routed system.

The compute-matched generalist trains on the mixture of its domains for as many tokens as the seed and
those domains' branches consumed (early stops included), so it is built after them; with
``parameter_matched_generalist`` also one as large as all those experts together, on the same tokens.
After the expert set grows, the one built before stays the comparison (reports say what it has not
seen) until ``train generalist`` retrains it on every card's domain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moe_experts.config import ModelShape, PhaseConfig
from moe_experts.data.tokenizer import load_tokenizer
from moe_experts.errors import MissingArtifactError
from moe_experts.modeling.checkpoints import new_model
from moe_experts.modeling.flops import llama_parameters
from moe_experts.modeling.stages import (
    GENERALIST,
    GENERALIST_PARAMS,
    SEED,
    Built,
    DataInputs,
    Setup,
    TrainOptions,
    _inputs,
    _reuse_or_build,
    _train_and_save,
    data_inputs,
    model_manifest,
)
from moe_experts.workspace import MANIFEST, read_json


def consumed_tokens(setup: Setup, names: Sequence[str] | None = None,
                    recorded: Mapping[str, int] | None = None) -> dict[str, int]:
    """Training tokens the seed and starter branches consumed (computed on, kept or not), by model name.

    ``names``: whose (default: the seed and every starter card's expert). ``recorded``: values to use for a
    model that is gone (an expert removed with its files), as the generalist matched to it recorded them.
    """
    names = list(names) if names is not None else [SEED, *[c.name for c in setup.registry.starters]]
    recorded = recorded or {}
    missing = [n for n in names if not (setup.workspace.model_dir(n) / MANIFEST).exists() and n not in recorded]
    if missing:
        raise MissingArtifactError(
            f"the compute-matched generalist is trained on as many tokens as the seed and the experts consumed, "
            f"and {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not trained yet",
            hint="run `moe-experts train seed` and `moe-experts train experts` first (or `moe-experts quickstart`)",
        )
    return {n: int(model_manifest(setup, n)["training"]["tokens"]) if (setup.workspace.model_dir(n) / MANIFEST).exists()
            else int(recorded[n]) for n in names}


@dataclass(frozen=True)
class GeneralistScope:
    """The mixture a compute-matched generalist learns, and whose consumed tokens it matches."""

    domains: tuple[str, ...]
    matched: tuple[str, ...]  # the seed and the branches of those domains
    recorded: Mapping[str, int] = field(default_factory=dict)


def generalist_scope(setup: Setup, data: DataInputs, domains: Sequence[str] | None = None) -> GeneralistScope:
    """``domains`` given: those, matched to the seed and their starter branches (``train generalist`` passes every
    card's). None: the scope the generalist in the workspace was built with, so that adding or removing an
    expert keeps it as the comparison; with none built, the base domains the seed learned that still have cards.
    """
    if domains is None:
        folder = setup.workspace.model_dir(GENERALIST)
        if (folder / MANIFEST).exists():
            m = read_json(folder / MANIFEST)
            matched = m.get("matched_to") or {}
            same_base = m.get("inputs", {}).get("corpus_hash") == data.corpus_hash  # not from before a full rebuild
            known = all(d in data.domain_hashes or data.is_base(d) for d in m["domains"] or [])  # a deleted base corpus too
            if same_base and m.get("domains") and matched and known:
                return GeneralistScope(tuple(m["domains"]), tuple(matched), {k: int(v) for k, v in matched.items()})
        domains = [d for d in setup.registry.domains if data.is_base(d)]
    starters = [c.name for c in setup.registry.starters if c.domain in domains]
    return GeneralistScope(tuple(domains), (SEED, *starters))


def train_generalists(setup: Setup, opts: TrainOptions = TrainOptions(), *,
                      domains: Sequence[str] | None = None) -> list[Built]:
    """The compute-matched generalist, and the parameter-matched one when the preset asks for it.

    ``domains``: the mixture to learn (None: the one it was built on; see ``generalist_scope``).
    """
    data = data_inputs(setup)
    scope = generalist_scope(setup, data, domains)
    consumed = consumed_tokens(setup, scope.matched, scope.recorded)  # read once: the budget, and what it matched
    phase = setup.preset.generalist_phase(sum(consumed.values()))
    n_branches = len(scope.matched) - 1
    out = [_train_generalist(setup, data, GENERALIST, setup.preset.model, phase, opts, "compute", consumed, scope)]
    if setup.preset.parameter_matched_generalist:
        vocab = len(load_tokenizer(setup.workspace.tokenizer_dir))
        target = n_branches * llama_parameters(setup.preset.model, vocab)
        shape = parameter_matched_shape(setup.preset.model, vocab, target)
        out.append(_train_generalist(setup, data, GENERALIST_PARAMS, shape, phase, opts, "parameters", consumed, scope))
    return out


def _train_generalist(
    setup: Setup, data: DataInputs, name: str, shape: ModelShape, phase: PhaseConfig, opts: TrainOptions, matched: str,
    consumed: dict[str, int], scope: GeneralistScope,
) -> Built:
    inputs = {**_inputs(setup, data, parent=None), "steps": phase.steps, "shape": shape.model_dump()}
    domains = list(scope.domains)
    if set(domains) != set(data.base_domains):  # a mixture other than the base: its corpora are inputs too
        inputs["domains"] = {d: data.domain_hashes[d] for d in domains}

    def build() -> dict[str, Any]:
        tokenizer = load_tokenizer(setup.workspace.tokenizer_dir)
        model = new_model(setup.preset, tokenizer, seed=setup.preset.seed, shape=shape)
        return _train_and_save(
            setup, name, model, tokenizer, data, domains, phase, inputs, opts,
            {"role": "generalist", "matched": matched, "domains": domains, "matched_to": consumed},
        )

    return _reuse_or_build(setup, name, inputs, opts, build)


def generalist_note(setup: Setup) -> str:
    """Which generalist the reports compare against, and what it has not seen."""
    folder = setup.workspace.model_dir(GENERALIST)
    if not (folder / MANIFEST).exists():
        return "no compute-matched generalist yet (`moe-experts train generalist`)"
    m = read_json(folder / MANIFEST)
    seen = list(m.get("domains") or [])
    unseen = [d for d in setup.registry.domains if d not in seen]
    tokens = m.get("training", {}).get("tokens_seen")
    text = f"the compute-matched generalist, trained on {', '.join(seen)}" + (f" ({tokens:,} tokens)" if tokens else "")
    if unseen:
        text += (f"; it has not seen {', '.join(unseen)}. `moe-experts train generalist` retrains it on every "
                 "card's domain, matched to the tokens of the seed and every expert")
    return text


def parameter_matched_shape(base: ModelShape, vocab_size: int, target_parameters: int) -> ModelShape:
    """The same depth and head count, wider, with about ``target_parameters`` parameters."""
    step = base.num_attention_heads * 8  # keep head_dim a multiple of 8
    ratio = base.intermediate_size / base.hidden_size
    best, hidden = base, base.hidden_size
    while True:
        hidden += step
        inter = int(round(hidden * ratio / 32)) * 32
        shape = base.model_copy(update={"hidden_size": hidden, "intermediate_size": inter})
        if llama_parameters(shape, vocab_size) > target_parameters:
            under = target_parameters - llama_parameters(best, vocab_size)
            over = llama_parameters(shape, vocab_size) - target_parameters
            return shape if over < under else best
        best = shape
