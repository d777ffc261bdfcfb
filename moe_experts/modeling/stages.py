"""Branch-Train-Merge pretraining of the starter experts, and the generalist baselines.

- seed: one model trained on the mixture of every domain's train split;
- experts: one copy of the seed per starter card, trained further on its own domain only
  (with ``branch_trunk: frozen``, only its FFNs: DEMix-style shared trunk);
- generalist (``generalist.py``): a model of the same shape trained on the mixture for
  as many tokens as the seed and every branch consumed (compute-matched).

Each stage writes ``models/<name>/`` atomically with a manifest of what it was
built from; a current artifact is reused, a stale one refused unless ``force``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from moe_experts.config import ExpertCard, ExpertRegistry, PhaseConfig, Preset
from moe_experts.data.build import base_domains, require_base_corpora, require_corpora
from moe_experts.data.tokenizer import load_stream, load_tokenizer, require_tokenizer
from moe_experts.modeling.checkpoints import (
    LoadedModel,
    count_parameters,
    load_checkpoint,
    load_pretrained,
    new_model,
    save_checkpoint,
    verify_checkpoint,
    weights_id,
)
from moe_experts.modeling.train import (
    BlockDataset,
    device_kind,
    prepare_checkpoint_dir,
    resolve_run_speed,
    train_causal_lm,
)
from moe_experts.modeling.validation import validation_callback, validation_set
from moe_experts.errors import MissingArtifactError, StaleArtifactError
from moe_experts.workspace import MANIFEST, Workspace, check_inputs, read_json

logger = logging.getLogger(__name__)

SEED = "seed"
GENERALIST = "generalist"
GENERALIST_PARAMS = "generalist-params"


@dataclass(frozen=True)
class Setup:
    """What every command works on: a workspace, the expert cards, the preset."""

    workspace: Workspace
    registry: ExpertRegistry
    preset: Preset


@dataclass(frozen=True)
class TrainOptions:
    resume: bool = False
    restart: bool = False
    force: bool = False  # rebuild even when current
    update: bool = False  # rebuild when stale instead of refusing
    callbacks: Sequence[Any] = ()  # extra transformers TrainerCallbacks (tests use one to interrupt)


@dataclass(frozen=True)
class Built:
    """What a stage produced: the model's manifest, and whether it was trained now or reused."""

    name: str
    manifest: dict[str, Any]
    trained: bool


@dataclass(frozen=True)
class DataInputs:
    corpus_hash: str  # of the base domains (built together): what the tokenizer and the seed learned from
    tokenizer_hash: str
    base_domains: tuple[str, ...] = ()
    domain_hashes: Mapping[str, Any] = field(default_factory=dict)  # every built domain's split hashes

    def is_base(self, domain: str) -> bool:
        return domain in self.base_domains


def data_inputs(setup: Setup) -> DataInputs:
    corpora = require_corpora(setup.workspace, setup.registry, setup.preset.data)
    tok = require_tokenizer(setup.workspace, corpora, setup.preset)
    return DataInputs(corpus_hash=corpora["corpus_hash"], tokenizer_hash=tok["tokenizer_hash"],
                      base_domains=tuple(base_domains(corpora)), domain_hashes=corpora["domains"])


@dataclass(frozen=True)
class BranchInit:
    """Where an expert added to a built workspace starts (Branch-Train-Merge's choices).

    ``seed``: the seed. ``average``: the average of existing experts' weights, weighted by ``weights``
    (the document router's posterior on the new domain's training documents). ``nearest``: the one
    expert in ``weights`` (the most similar).
    """

    method: Literal["seed", "average", "nearest"] = "seed"
    weights: Mapping[str, float] = field(default_factory=dict)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _inputs(setup: Setup, data: DataInputs, parent: str | None) -> dict[str, Any]:
    return {
        "preset": setup.preset.fingerprint(),
        "corpus_hash": data.corpus_hash,
        "tokenizer_hash": data.tokenizer_hash,
        "parent_weights": parent,
    }


def _current_manifest(setup: Setup, name: str, inputs: dict[str, Any], opts: TrainOptions) -> dict[str, Any] | None:
    """The verified manifest of a model to reuse as it is, or None when it must be built (missing, ``force``,
    or stale with ``update``); a stale model without ``update`` is refused."""
    folder = setup.workspace.model_dir(name)
    if opts.force or not (folder / MANIFEST).exists():
        return None
    manifest = verify_checkpoint(folder)
    try:
        check_inputs(
            f"model '{name}'",
            manifest.get("inputs", {}),
            inputs,
            rebuild_hint=f"retrain it with --force, or run `moe-experts quickstart --update` ({folder})",
        )
    except StaleArtifactError:
        if not opts.update:
            raise
        logger.info("%s: stale, retraining", name)
        return None
    return manifest


def _reuse_or_build(
    setup: Setup, name: str, inputs: dict[str, Any], opts: TrainOptions, build: Callable[[], dict[str, Any]]
) -> Built:
    manifest = _current_manifest(setup, name, inputs, opts)
    if manifest is not None:
        logger.info("%s: up to date, reusing %s", name, setup.workspace.model_dir(name))
        return Built(name, manifest, trained=False)
    return Built(name, build(), trained=True)


def _train_and_save(
    setup: Setup,
    name: str,
    model: Any,
    tokenizer: Any,
    data: DataInputs,
    domains: Sequence[str],
    phase: PhaseConfig,
    inputs: dict[str, Any],
    opts: TrainOptions,
    extra: dict[str, Any],
    tokens_before: int = 0,
    run_inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train on the uniform mixture of ``domains`` for ``phase``'s budget, validate, save the best weights.

    ``tokens_before``: training tokens the starting weights had already seen (a branch's seed).
    ``run_inputs``: what a resumed run must share with the interrupted one (default ``inputs``).
    """
    ws, preset = setup.workspace, setup.preset
    streams = {d: load_stream(ws, data.tokenizer_hash, d, "train") for d in domains}
    budget = phase.resolve(preset.tokens_per_step * _world_size(), {d: len(s) for d, s in streams.items()})
    run = phase.model_copy(update={"steps": budget.steps, "tokens": None, "epochs": None,
                                   "warmup_steps": budget.warmup_steps})
    ckpt_dir = ws.checkpoints_dir(name)
    resume_from = prepare_checkpoint_dir(ckpt_dir, what=name, resume=opts.resume, restart=opts.restart,
                                       inputs=run_inputs or inputs)
    length = run.steps * preset.batch_size * preset.gradient_accumulation_steps * _world_size()
    dataset = BlockDataset(list(streams.values()), preset.seq_len, length, seed=preset.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("%s: training %s of %s parameters for %s (%s tokens)", name, f"{trainable:,}",
                f"{count_parameters(model):,}", budget.describe(), f"{run.steps * preset.tokens_per_step * _world_size():,}")
    speed = resolve_run_speed(model, preset, device_kind(), run.steps)
    validation = None
    callbacks = list(opts.callbacks)
    if preset.validation.every_steps is not None:
        val_streams = {d: load_stream(ws, data.tokenizer_hash, d, "val") for d in domains}
        val = validation_set(val_streams, tokenizer, seq_len=preset.seq_len,
                             tokens_per_domain=preset.validation.tokens_per_domain)
        validation = validation_callback(model, val, preset.validation, what=name, batch_size=preset.batch_size,
                                         resume_from=resume_from, bf16=speed.precision == "bf16")
        callbacks.insert(0, validation)
    result, trainer = train_causal_lm(
        model, dataset, phase=run, preset=preset, ckpt_dir=ckpt_dir, resume_from=resume_from,
        seed=preset.seed, what=name, callbacks=callbacks, speed=speed,
    )
    kept_step = result.steps
    if validation is not None:
        validation.restore_best(result.steps)
        kept_step = validation.state.best_step
    kept_tokens = kept_step * preset.tokens_per_step * _world_size()
    training = {
        **vars(result), **run.model_dump(exclude={"steps", "tokens", "epochs", "max_epochs"}),
        "budget": {**phase.model_dump(include={"steps", "tokens", "epochs", "max_epochs"}, exclude_none=True),
                   "planned_steps": budget.planned_steps, "resolved_steps": budget.steps, "capped": budget.capped,
                   "scale": budget.scale,
                   "epochs_per_domain": {d: round(e, 4) for d, e in budget.epochs.items()}},
        "validation": validation.state.to_json() if validation is not None else None,
        "kept_step": kept_step,
        "kept_tokens": kept_tokens,
        # what the kept weights have been trained on, from random initialisation
        "tokens_seen": tokens_before + kept_tokens,
    }
    manifest: dict[str, Any] = {}
    if _is_main_process():
        manifest = save_checkpoint(model, tokenizer, ws.model_dir(name),
                                   {"name": name, "inputs": inputs, "training": training, **extra})
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        logger.info("%s: done in %.1f s, loss %.3f -> %.3f; kept step %d of %d", name, result.seconds,
                    result.first_loss, result.last_loss, kept_step, result.steps)
    trainer.accelerator.wait_for_everyone()
    return manifest


# --------------------------------------------------------------------------- stages


def train_seed(setup: Setup, opts: TrainOptions = TrainOptions()) -> Built:
    data = data_inputs(setup)
    inputs = _inputs(setup, data, parent=None)

    def build() -> dict[str, Any]:
        tokenizer = load_tokenizer(setup.workspace.tokenizer_dir)
        model = new_model(setup.preset, tokenizer, seed=setup.preset.seed)
        # what the tokenizer learned from; experts added later branch from it
        domains = require_base_corpora(setup.workspace, read_json(setup.workspace.corpora_dir / MANIFEST), "the seed")
        return _train_and_save(
            setup, SEED, model, tokenizer, data, domains, setup.preset.seed_phase, inputs, opts,
            {"role": "seed", "domains": domains},
        )

    return _reuse_or_build(setup, SEED, inputs, opts, build)


def parallel_branch_workers(preset: Preset, branches: int) -> int:
    """How many expert branches train side by side (``speed.parallel_branches``), for ``branches`` to train."""
    setting = preset.speed.parallel_branches
    if branches < 2 or _world_size() > 1:  # under torchrun every process already trains every branch with the others
        return 1
    if setting != "auto":
        return min(int(setting), branches)
    import torch

    if not torch.cuda.is_available():
        return 1  # 2 cores: one branch per core ran at 56% of a two-core branch, so two side by side gain ~1.1x
    gpus = torch.cuda.device_count()
    return min(branches, gpus if gpus > 1 else 4)


_WARNED_SCALES: set[tuple[str, tuple[str, ...]]] = set()  # (preset, budget_scale domains no card declares)


def train_experts(
    setup: Setup, domains: Sequence[str] | None = None, opts: TrainOptions = TrainOptions(),
    init: BranchInit | None = None, *, parallel: int | None = None,
) -> list[Built]:
    """Branch the seed into one expert per starter card (of the given domains).

    A card whose domain was added after the seed (not a base domain) starts from ``init`` (default: the
    seed) and trains on its own domain alone; an existing current expert is reused whatever its init.
    ``parallel``: branches trained side by side, each in its own process (default: the preset's
    ``speed.parallel_branches``); the results are the same models, in card order.
    """
    cards = setup.registry.select(domains)
    unknown = sorted(set(setup.preset.branch_phase.budget_scale or {}) - {c.domain for c in setup.registry.cards})
    # a warning, not an error: a shipped preset may name a starter domain whose card was removed; once per
    # process, not once per call (the pipeline trains card by card, and this recurses for parallel branches)
    if unknown and (key := (setup.preset.fingerprint(), tuple(unknown))) not in _WARNED_SCALES:
        _WARNED_SCALES.add(key)
        logger.warning("preset %s: branch_phase.budget_scale names %s, which no card declares; those scales are unused "
                       "(check the spelling against the cards' domains)", setup.preset.name, ", ".join(unknown))
    data = data_inputs(setup)
    seed_dir = setup.workspace.model_dir(SEED)
    seed_manifest = verify_checkpoint(seed_dir) if (seed_dir / MANIFEST).exists() else None
    if seed_manifest is not None and not opts.callbacks:  # callbacks live in this process only
        todo = [c for c in cards if c.model.kind == "starter" and data.is_base(c.domain)
                and _current_manifest(setup, c.name, _inputs(setup, data, parent=weights_id(seed_manifest)), opts) is None]
        workers = parallel if parallel is not None else parallel_branch_workers(setup.preset, len(todo))
        if workers > 1 and len(todo) > 1:
            built = dict(zip([c.name for c in todo], _train_branches_in_parallel(setup, todo, opts, workers)))
            rest = [c.domain for c in cards if c.name not in built]
            done = {b.name: b for b in train_experts(setup, rest, opts, init, parallel=1)} if rest else {}
            return [built.get(c.name) or done[c.name] for c in cards if c.name in built or c.name in done]
    out: list[Built] = []
    for card in cards:
        if card.model.kind != "starter":
            logger.info("%s: uses pretrained model %s; nothing to train", card.name, card.model.name_or_path)
            continue
        if seed_manifest is None:
            raise MissingArtifactError(
                "experts are branched from the seed model, which is not built yet",
                hint="run `moe-experts train seed` first (or `moe-experts quickstart`)",
            )
        if data.is_base(card.domain):
            out.append(_train_branch(setup, card, data, seed_manifest, opts))
        else:
            out.append(_train_added_branch(setup, card, data, seed_manifest, opts, init or BranchInit()))
    return out


def _branch_worker(setup: Setup, domain: str, opts: TrainOptions, threads: int, gpu: int | None, level: int) -> Built:
    """One branch, in a process of its own (spawned: a clean torch, its own threads or GPU)."""
    import logging as _logging
    import sys

    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before CUDA starts in this process
    os.environ["MOE_EXPERTS_NO_PROGRESS"] = "1"  # several bars on one terminal would garble each other
    root = _logging.getLogger("moe_experts")
    if not root.handlers:
        handler = _logging.StreamHandler(sys.stderr)
        handler.setFormatter(_logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(level)
        root.propagate = False
    import torch

    torch.set_num_threads(threads)
    return train_experts(setup, [domain], opts, parallel=1)[0]


def _train_branches_in_parallel(setup: Setup, cards: Sequence[ExpertCard], opts: TrainOptions, workers: int) -> list[Built]:
    """Train ``cards``' branches ``workers`` at a time, one process each; every branch finishes before an error is raised."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from moe_experts.machine import usable_cores

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    threads = max(1, usable_cores() // workers)  # the cores shared out (on a GPU they only feed it)
    level = logging.getLogger("moe_experts").getEffectiveLevel()
    logger.info("experts: training %s side by side, %d at a time (%s)", ", ".join(c.name for c in cards), workers,
                f"{gpus} GPU(s)" if gpus else f"{threads} thread(s) each")
    # spawn, not fork: a forked child of a process that has started torch's threads (or CUDA) can hang
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(_branch_worker, setup, card.domain, opts, threads, (i % gpus) if gpus > 1 else None, level)
                   for i, card in enumerate(cards)]
        results, errors = [], []
        for card, future in zip(cards, futures):
            try:
                results.append(future.result())
            except Exception as exc:  # noqa: BLE001 - reported below, after the other branches finish
                logger.error("%s: training failed: %s", card.name, exc)
                errors.append(exc)
    if errors:
        raise errors[0]
    return results


def _train_branch(
    setup: Setup, card: ExpertCard, data: DataInputs, seed_manifest: dict[str, Any], opts: TrainOptions
) -> Built:
    inputs = _inputs(setup, data, parent=weights_id(seed_manifest))

    def build() -> dict[str, Any]:
        loaded = load_checkpoint(setup.workspace.model_dir(SEED))
        frozen = freeze_trunk(loaded.model) if setup.preset.branch_trunk == "frozen" else 0
        return _train_and_save(
            setup, card.name, loaded.model, loaded.tokenizer, data, [card.domain], setup.preset.branch_phase, inputs,
            opts, {"role": "expert", "domains": [card.domain], "trunk": setup.preset.branch_trunk,
                   "frozen_parameters": frozen},
            # a seed built before tokens were recorded kept its last step
            tokens_before=tokens_seen(seed_manifest) or int(seed_manifest["training"]["tokens"]),
        )

    return _reuse_or_build(setup, card.name, inputs, opts, build)


def _train_added_branch(
    setup: Setup, card: ExpertCard, data: DataInputs, seed_manifest: dict[str, Any], opts: TrainOptions,
    init: BranchInit,
) -> Built:
    """An expert for a domain added after the seed: tokenizer and seed frozen, trained on its domain alone."""
    # the seed is the lineage every init shares; how it was initialised is recorded, not compared on reuse
    inputs = {**_inputs(setup, data, parent=weights_id(seed_manifest)), "domain_corpus": data.domain_hashes[card.domain]}

    def build() -> dict[str, Any]:
        loaded = load_checkpoint(setup.workspace.model_dir(SEED))
        before = tokens_seen(seed_manifest) or int(seed_manifest["training"]["tokens"])
        record: dict[str, Any] = {"method": "seed", "from": {SEED: weights_id(seed_manifest)}}
        if init.method != "seed":
            weights = {n: float(w) for n, w in init.weights.items() if w > 0}
            if not weights:
                raise MissingArtifactError(f"`init` {init.method} for '{card.name}' names no expert to start from",
                                           hint="use `init` seed, or build the other experts first")
            manifests = {n: verify_checkpoint(setup.workspace.model_dir(n)) for n in weights}
            loaded.model.load_state_dict(average_weights(setup, weights))
            record = {"method": init.method, "weights": {n: round(w / sum(weights.values()), 6) for n, w in weights.items()},
                      "from": {n: weights_id(m) for n, m in manifests.items()}}
            # every token behind the averaged weights: the seed's once, and what each branch added to it
            before += sum((tokens_seen(m) or 0) - before for m in manifests.values())
        frozen = freeze_trunk(loaded.model) if setup.preset.branch_trunk == "frozen" else 0
        logger.info("%s: added expert, initialised from %s", card.name,
                    record["method"] if init.method == "seed" else ", ".join(f"{n} {w:.3f}" for n, w in record["weights"].items()))
        return _train_and_save(
            setup, card.name, loaded.model, loaded.tokenizer, data, [card.domain], setup.preset.branch_phase, inputs,
            opts, {"role": "expert", "added": True, "init": record, "domains": [card.domain],
                   "trunk": setup.preset.branch_trunk, "frozen_parameters": frozen},
            tokens_before=before, run_inputs={**inputs, "init": init.method, "init_weights": dict(init.weights)},
        )

    return _reuse_or_build(setup, card.name, inputs, opts, build)


def average_weights(setup: Setup, weights: Mapping[str, float]) -> dict[str, Any]:
    """The weighted average of workspace experts' parameters (weights normalised to sum to one), in float32."""
    import torch

    total = sum(weights.values())
    out: dict[str, Any] = {}
    for name, w in weights.items():
        state = load_checkpoint(setup.workspace.model_dir(name)).model.state_dict()
        for key, tensor in state.items():
            part = tensor.detach().float() * (w / total)
            out[key] = part if key not in out else out[key] + part
    return {k: v.to(torch.float32) for k, v in out.items()}


def freeze_trunk(model: Any) -> int:
    """Freeze everything but the FFNs (DEMix): attention, norms, embeddings and head stay the seed's; frozen count."""
    frozen = 0
    for name, param in model.named_parameters():
        if ".mlp." not in name:
            param.requires_grad = False
            frozen += param.numel()
    return frozen


def tokens_seen(manifest: dict[str, Any]) -> int | None:
    """Training tokens behind a starter checkpoint's weights, from random initialisation (None: not recorded)."""
    seen = manifest.get("training", {}).get("tokens_seen")
    return None if seen is None else int(seen)


def trained_models(setup: Setup) -> list[str]:
    """Names of the starter-built models present in the workspace, in a fixed order."""
    names = [SEED, *[c.name for c in setup.registry.starters], GENERALIST, GENERALIST_PARAMS]
    return [n for n in names if (setup.workspace.model_dir(n) / MANIFEST).exists()]


def model_manifest(setup: Setup, name: str) -> dict[str, Any]:
    return read_json(setup.workspace.model_dir(name) / MANIFEST)


def _pretrained_card(setup: Setup, name: str) -> ExpertCard | None:
    card = setup.registry.by_name(name) if name in setup.registry.names else None
    return card if card is not None and card.model.kind == "pretrained" else None


def load_expert(setup: Setup, name: str, device: str = "cpu") -> LoadedModel:
    """A model by name: a card's pretrained model (local folder or hub id), else the workspace's ``models/<name>/``.

    Experts, the seed and the generalists alike; a workspace checkpoint is hash-checked on load.
    """
    card = _pretrained_card(setup, name)
    if card is not None:
        return load_pretrained(card.model, device=device, card=card.name)
    return load_checkpoint(setup.workspace.model_dir(name), device=device)


def expert_weights_id(setup: Setup, name: str) -> str:
    """What ``load_expert(setup, name)`` would load, in a few characters: what is built from it records this.

    A card's pretrained model is its name and revision; a workspace checkpoint, its weights' hash (``weights_id``).
    """
    card = _pretrained_card(setup, name)
    if card is not None:
        return f"{card.model.name_or_path}@{card.model.revision or 'default'}"
    return weights_id(model_manifest(setup, name))
