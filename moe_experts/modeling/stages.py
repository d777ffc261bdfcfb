"""Branch-Train-Merge pretraining of the starter experts, and the generalist baselines.

- seed: one model trained on the mixture of every domain's train split;
- experts: one copy of the seed per starter card, trained further on its own domain only;
- generalist: a model of the same shape trained on the mixture for as many
  optimiser steps (and so tokens) as the seed and every branch together
  (compute-matched); with ``parameter_matched_generalist`` also one as large as
  all experts together, on the same tokens.

Each stage writes ``models/<name>/`` atomically with a manifest of what it was
built from; a current artifact is reused, a stale one refused unless ``force``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from moe_experts.config import ExpertCard, ExpertRegistry, ModelShape, PhaseConfig, Preset
from moe_experts.data.build import require_corpora
from moe_experts.data.tokenizer import load_stream, load_tokenizer, require_tokenizer
from moe_experts.modeling.checkpoints import count_parameters, load_checkpoint, new_model, save_checkpoint, verify_checkpoint
from moe_experts.modeling.train import BlockDataset, TrainResult, prepare_checkpoint_dir, train_causal_lm
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
    corpus_hash: str
    tokenizer_hash: str


def data_inputs(setup: Setup) -> DataInputs:
    corpora = require_corpora(setup.workspace, setup.registry, setup.preset.data)
    tok = require_tokenizer(setup.workspace, corpora, setup.preset)
    return DataInputs(corpus_hash=corpora["corpus_hash"], tokenizer_hash=tok["tokenizer_hash"])


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


def _weights_id(manifest: dict[str, Any]) -> str:
    """A short id of a checkpoint's weights, used as the parent of what is trained from it."""
    return next(iter(manifest["weights_sha256"].values()))[:16]


def _reuse_or_build(
    setup: Setup, name: str, inputs: dict[str, Any], opts: TrainOptions, build: Callable[[], dict[str, Any]]
) -> Built:
    folder = setup.workspace.model_dir(name)
    if (folder / MANIFEST).exists() and not opts.force:
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
            return Built(name, build(), trained=True)
        logger.info("%s: up to date, reusing %s", name, folder)
        return Built(name, manifest, trained=False)
    return Built(name, build(), trained=True)


def _train_and_save(
    setup: Setup,
    name: str,
    model: Any,
    tokenizer: Any,
    streams: list[Any],
    phase: PhaseConfig,
    inputs: dict[str, Any],
    opts: TrainOptions,
    extra: dict[str, Any],
) -> dict[str, Any]:
    ws, preset = setup.workspace, setup.preset
    ckpt_dir = ws.checkpoints_dir(name)
    resume_from = prepare_checkpoint_dir(ckpt_dir, what=name, resume=opts.resume, restart=opts.restart, inputs=inputs)
    length = phase.steps * preset.batch_size * preset.gradient_accumulation_steps * _world_size()
    dataset = BlockDataset(streams, preset.seq_len, length, seed=preset.seed)
    logger.info(
        "%s: training %s parameters for %d steps (%s tokens)",
        name, f"{count_parameters(model):,}", phase.steps, f"{phase.steps * preset.tokens_per_step * _world_size():,}",
    )
    result, trainer = train_causal_lm(
        model, dataset, phase=phase, preset=preset, ckpt_dir=ckpt_dir, resume_from=resume_from,
        seed=preset.seed, what=name, callbacks=opts.callbacks,
    )
    manifest: dict[str, Any] = {}
    if _is_main_process():
        manifest = save_checkpoint(
            model,
            tokenizer,
            ws.model_dir(name),
            {"name": name, "inputs": inputs, "training": _result_json(result, phase), **extra},
        )
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        logger.info("%s: done in %.1f s, loss %.3f -> %.3f", name, result.seconds, result.first_loss, result.last_loss)
    trainer.accelerator.wait_for_everyone()
    return manifest


def _result_json(result: TrainResult, phase: PhaseConfig) -> dict[str, Any]:
    return {**vars(result), **phase.model_dump(exclude={"steps"})}


def _mixture(setup: Setup, data: DataInputs) -> list[Any]:
    return [load_stream(setup.workspace, data.tokenizer_hash, d, "train") for d in setup.registry.domains]


# --------------------------------------------------------------------------- stages


def train_seed(setup: Setup, opts: TrainOptions = TrainOptions()) -> Built:
    data = data_inputs(setup)
    inputs = _inputs(setup, data, parent=None)

    def build() -> dict[str, Any]:
        tokenizer = load_tokenizer(setup.workspace.tokenizer_dir)
        model = new_model(setup.preset, tokenizer, seed=setup.preset.seed)
        return _train_and_save(
            setup, SEED, model, tokenizer, _mixture(setup, data), setup.preset.seed_phase, inputs, opts,
            {"role": "seed", "domains": setup.registry.domains},
        )

    return _reuse_or_build(setup, SEED, inputs, opts, build)


def train_experts(
    setup: Setup, domains: Sequence[str] | None = None, opts: TrainOptions = TrainOptions()
) -> list[Built]:
    """Branch the seed into one expert per starter card (of the given domains)."""
    cards = setup.registry.select(domains)
    data = data_inputs(setup)
    seed_dir = setup.workspace.model_dir(SEED)
    seed_manifest = verify_checkpoint(seed_dir) if (seed_dir / MANIFEST).exists() else None
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
        out.append(_train_branch(setup, card, data, seed_manifest, opts))
    return out


def _train_branch(
    setup: Setup, card: ExpertCard, data: DataInputs, seed_manifest: dict[str, Any], opts: TrainOptions
) -> Built:
    inputs = _inputs(setup, data, parent=_weights_id(seed_manifest))

    def build() -> dict[str, Any]:
        loaded = load_checkpoint(setup.workspace.model_dir(SEED))
        stream = load_stream(setup.workspace, data.tokenizer_hash, card.domain, "train")
        return _train_and_save(
            setup, card.name, loaded.model, loaded.tokenizer, [stream], setup.preset.branch_phase, inputs, opts,
            {"role": "expert", "domains": [card.domain]},
        )

    return _reuse_or_build(setup, card.name, inputs, opts, build)


def train_generalists(setup: Setup, opts: TrainOptions = TrainOptions()) -> list[Built]:
    """The compute-matched generalist, and the parameter-matched one when the preset asks for it."""
    data = data_inputs(setup)
    n_branches = len(setup.registry.starters)
    phase = setup.preset.generalist_phase(n_branches)
    out = [_train_generalist(setup, data, GENERALIST, setup.preset.model, phase, opts, "compute")]
    if setup.preset.parameter_matched_generalist:
        vocab = len(load_tokenizer(setup.workspace.tokenizer_dir))
        target = n_branches * llama_parameters(setup.preset.model, vocab)
        shape = parameter_matched_shape(setup.preset.model, vocab, target)
        out.append(_train_generalist(setup, data, GENERALIST_PARAMS, shape, phase, opts, "parameters"))
    return out


def _train_generalist(
    setup: Setup, data: DataInputs, name: str, shape: ModelShape, phase: PhaseConfig, opts: TrainOptions, matched: str
) -> Built:
    inputs = {**_inputs(setup, data, parent=None), "steps": phase.steps, "shape": shape.model_dump()}

    def build() -> dict[str, Any]:
        tokenizer = load_tokenizer(setup.workspace.tokenizer_dir)
        model = new_model(setup.preset, tokenizer, seed=setup.preset.seed, shape=shape)
        return _train_and_save(
            setup, name, model, tokenizer, _mixture(setup, data), phase, inputs, opts,
            {"role": "generalist", "matched": matched, "domains": setup.registry.domains},
        )

    return _reuse_or_build(setup, name, inputs, opts, build)


def llama_parameters(shape: ModelShape, vocab_size: int) -> int:
    """Parameters of a Llama model of this shape (embeddings, attention, MLP, norms, head)."""
    h, inter, layers = shape.hidden_size, shape.intermediate_size, shape.num_hidden_layers
    kv = h // shape.num_attention_heads * shape.num_key_value_heads
    attn = h * h * 2 + h * kv * 2  # q, o: (h, h); k, v: (h, kv)
    mlp = 3 * h * inter  # gate, up, down
    per_layer = attn + mlp + 2 * h  # two RMSNorms
    head = 0 if shape.tie_word_embeddings else vocab_size * h
    return vocab_size * h + layers * per_layer + h + head


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


def trained_models(setup: Setup) -> list[str]:
    """Names of the starter-built models present in the workspace, in a fixed order."""
    names = [SEED, *[c.name for c in setup.registry.starters], GENERALIST, GENERALIST_PARAMS]
    return [n for n in names if (setup.workspace.model_dir(n) / MANIFEST).exists()]


def model_manifest(setup: Setup, name: str) -> dict[str, Any]:
    return read_json(setup.workspace.model_dir(name) / MANIFEST)
