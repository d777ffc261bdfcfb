"""Pydantic models for expert cards and training presets, validated once where they enter.

Cards live in ``experts/*.yaml`` (one per expert); presets in
``moe_experts/presets/*.yaml`` or any YAML path a user passes. Every model is
strict (``extra="forbid"``) and frozen, so a typo fails at load time with the
file and field named, never half-way through a run.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moe_experts.sources import SOURCES
from moe_experts.errors import ConfigError, UnknownDomainError

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
PRESETS_DIR = Path(__file__).parent / "presets"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def fingerprint(self) -> str:
        """A stable hash of every field, recorded in what is built from this config and compared on reuse."""
        return hash_json(self.model_dump(mode="json"))


# The union of every registered source's params, discriminated by ``kind``:
# a card naming an unknown kind fails with the list of known ones.
SourceSpec = Annotated[Union[tuple(s.Params for s in SOURCES.values())], Field(discriminator="kind")]  # noqa: UP007


# --------------------------------------------------------------------------- cards


class ModelSource(StrictModel):
    """Where an expert's weights come from.

    ``starter``: pretrained by this project from the card's corpus (Branch-Train-Merge).
    ``pretrained``: any causal LM, by Hugging Face id or local path.
    In YAML, the plain string ``starter`` or an id / path is accepted as shorthand.
    """

    kind: Literal["starter", "pretrained"]
    name_or_path: str | None = None
    revision: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"kind": "starter"} if value == "starter" else {"kind": "pretrained", "name_or_path": value}
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelSource:
        if self.kind == "pretrained" and not self.name_or_path:
            raise ValueError("kind 'pretrained' needs name_or_path (a Hugging Face id or a local folder)")
        if self.kind == "starter" and (self.name_or_path or self.revision):
            raise ValueError("kind 'starter' takes no name_or_path or revision")
        return self


class CorpusSpec(StrictModel):
    sources: list[SourceSpec] = Field(min_length=1)
    min_documents: int = Field(default=200, ge=1, description="Fail the build below this many documents.")
    min_characters: int = Field(default=50_000, ge=1, description="Fail the build below this many characters.")
    max_documents: int | None = Field(
        default=None, ge=1, description="Keep at most this many documents, chosen by content hash."
    )
    min_chars_per_doc: int = Field(default=64, ge=1)
    max_chars_per_doc: int = Field(default=2000, ge=64, description="Longer documents are cut at paragraph breaks.")

    @model_validator(mode="after")
    def _check(self) -> CorpusSpec:
        if self.min_chars_per_doc >= self.max_chars_per_doc:
            raise ValueError("min_chars_per_doc must be smaller than max_chars_per_doc")
        if self.max_documents is not None and self.max_documents < self.min_documents:
            raise ValueError("max_documents must be at least min_documents")
        return self


class Examples(StrictModel):
    """Prompts that must route to this expert (positive) and must not (negative)."""

    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)

    @field_validator("positive", "negative")
    @classmethod
    def _non_empty(cls, prompts: list[str]) -> list[str]:
        if any(not p.strip() for p in prompts):
            raise ValueError("example prompts must not be empty")
        return prompts


class GenerationDefaults(StrictModel):
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float = Field(default=0.8, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.1, ge=1.0, le=3.0)


class ExpertCard(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    domain: str = Field(pattern=NAME_PATTERN)
    description: str = Field(min_length=1, max_length=200)
    fallback: bool = Field(default=False, description="Receives requests the router abstains on.")
    model: ModelSource
    corpus: CorpusSpec
    examples: Examples
    generation: GenerationDefaults = GenerationDefaults()

    @field_validator("description")
    @classmethod
    def _one_line(cls, text: str) -> str:
        if "\n" in text.strip():
            raise ValueError("description must be one line")
        return text.strip()


class ExpertRegistry(StrictModel):
    """The validated set of expert cards, in a stable order (sorted by name)."""

    cards: tuple[ExpertCard, ...]
    source_dir: str

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cards]

    @property
    def domains(self) -> list[str]:
        return [c.domain for c in self.cards]

    @property
    def fallback(self) -> ExpertCard:
        return next(c for c in self.cards if c.fallback)

    @property
    def starters(self) -> list[ExpertCard]:
        return [c for c in self.cards if c.model.kind == "starter"]

    def by_domain(self, domain: str) -> ExpertCard:
        for card in self.cards:
            if card.domain == domain:
                return card
        raise UnknownDomainError(
            f"unknown domain '{domain}'; the cards in {self.source_dir} declare: {', '.join(self.domains)}",
            hint=f"use one of those names, or add a card {self.source_dir}/{domain}.yaml",
        )

    def by_name(self, name: str) -> ExpertCard:
        for card in self.cards:
            if card.name == name:
                return card
        raise UnknownDomainError(
            f"unknown expert '{name}'; the cards in {self.source_dir} declare: {', '.join(self.names)}",
            hint=f"use one of those names, or add a card {self.source_dir}/{name}.yaml",
        )

    def select(self, domains: Iterable[str] | None) -> list[ExpertCard]:
        """The cards of the given domains (all when None), unknown names refused."""
        if domains is None:
            return list(self.cards)
        return [self.by_domain(d) for d in domains]

    def fingerprint(self) -> str:
        """A hash of every card's content, recorded in manifests built from the cards."""
        return hash_json([c.model_dump(mode="json") for c in self.cards])


def format_validation_error(where: str, error: ValidationError) -> str:
    lines = [f"{where}: {error.error_count()} invalid field(s)"]
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  - {loc}: {err['msg']}")
    return "\n".join(lines)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def load_card(path: Path) -> ExpertCard:
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a card must be a YAML mapping, got {type(data).__name__}")
    try:
        card = ExpertCard.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(str(path), exc), hint=f"edit {path}; see experts/README.md for every field"
        ) from exc
    if card.name != path.stem:
        raise ConfigError(
            f"{path}: field name: '{card.name}' differs from the file name '{path.stem}'",
            hint=f"rename the file to {card.name}.yaml or set name: {path.stem}",
        )
    return card


def load_registry(cards_dir: Path) -> ExpertRegistry:
    """Load and validate every ``*.yaml`` card in a folder."""
    if not cards_dir.is_dir():
        raise ConfigError(
            f"expert cards folder {cards_dir} does not exist",
            hint="run from the repository root, or give the cards folder (the cards option, or MOE_EXPERTS_CARDS)",
        )
    paths = sorted(cards_dir.glob("*.yaml"))
    if not paths:
        raise ConfigError(f"no expert cards (*.yaml) in {cards_dir}", hint="add one card per expert, e.g. law.yaml")
    cards = sorted((load_card(p) for p in paths), key=lambda c: c.name)
    for attr in ("name", "domain"):
        seen: dict[str, str] = {}
        for card in cards:
            value = getattr(card, attr)
            if value in seen:
                raise ConfigError(f"{cards_dir}: cards {seen[value]} and {card.name} both declare {attr} '{value}'")
            seen[value] = card.name
    fallbacks = [c.name for c in cards if c.fallback]
    if len(fallbacks) != 1:
        raise ConfigError(
            f"{cards_dir}: exactly one card must set fallback: true (found {len(fallbacks)}: {fallbacks or 'none'})",
            hint="set fallback: true on the general-purpose expert's card only",
        )
    if len(cards) < 2:
        raise ConfigError(f"{cards_dir}: a mixture needs at least two experts, found {len(cards)}")
    return ExpertRegistry(cards=tuple(cards), source_dir=str(cards_dir))


# --------------------------------------------------------------------------- presets


class ModelShape(StrictModel):
    """A Llama-architecture causal LM's size (transformers ``LlamaConfig`` fields)."""

    hidden_size: int = Field(ge=8)
    num_hidden_layers: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_key_value_heads: int = Field(ge=1)
    intermediate_size: int = Field(ge=8)
    rope_theta: float = 10_000.0
    tie_word_embeddings: bool = True

    @model_validator(mode="after")
    def _check(self) -> ModelShape:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        return self


class Decay(StrictModel):
    """How a learning rate falls after warmup: the curve, and the fraction of the peak it ends at."""

    schedule: Literal["cosine", "linear", "1-sqrt"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)


class _Schedule(StrictModel):
    """Warmup and decay of one training phase (its budget and peak learning rate are the subclass's)."""

    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["cosine", "linear", "1-sqrt", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(default=0.1, ge=0.0)


@dataclass(frozen=True)
class Budget:
    """A phase's budget resolved against its data: optimiser steps, and why that many."""

    steps: int
    warmup_steps: int
    planned_steps: int  # before the repeats cap
    capped: bool  # the cap on repeats of the smallest domain cut the budget
    epochs: dict[str, float]  # domain -> passes over its train tokens at ``steps``
    scale: float = 1.0  # the phase's budget_scale for this (one) domain

    def describe(self) -> str:
        passes = ", ".join(f"{d} {e:.2f}" for d, e in self.epochs.items())
        cap = f" (capped from {self.planned_steps} by max_epochs)" if self.capped else ""
        scaled = f", {self.scale:g}x the phase's budget" if self.scale != 1.0 else ""
        return f"{self.steps} steps{cap}{scaled}; epochs per domain: {passes}"


class PhaseConfig(_Schedule):
    """One training phase: AdamW for a budget of steps, tokens or epochs; linear warmup, then ``schedule``.

    The budget is data-aware: ``tokens`` and ``epochs`` are turned into steps
    against the phase's data, and ``max_epochs`` caps the passes over any one
    domain's train tokens (a small domain is not repeated eight times because a
    step count was chosen for a large one). ``epochs`` of a mixture counts
    passes over all its domains' tokens together.

    ``cosine``, ``linear`` and ``1-sqrt`` decay to ``min_lr_ratio`` of the peak along that curve (``1-sqrt``:
    the rate falls as 1 - sqrt(progress), fast at first, as in warmup-stable-decay runs); ``constant`` holds
    the peak.
    A constant seed followed by cosine branches is a warmup-stable-decay run
    whose decay happens in each domain: the seed is not annealed only for every
    branch to re-warm it.
    """

    learning_rate: float = Field(gt=0.0, le=1.0)
    steps: int | None = Field(default=None, ge=1, description="Budget in optimiser steps.")
    tokens: int | None = Field(default=None, ge=1, description="Budget in training tokens.")
    epochs: float | None = Field(default=None, gt=0.0, description="Budget in passes over the phase's train tokens.")
    max_epochs: float | None = Field(
        default=None, gt=0.0, description="Cap on the passes over any one domain's train tokens.")
    budget_scale: dict[str, float] | None = Field(
        default=None, description="For a phase that trains one domain at a time (the branches): that domain's "
        "budget as a multiple of the phase's, e.g. {code: 1.333, general: 0.667}; a domain not named keeps 1. "
        "The compute-matched generalist follows, since it is matched to the tokens the branches consumed.")

    @model_validator(mode="after")
    def _check(self) -> PhaseConfig:
        given = [k for k in ("steps", "tokens", "epochs") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one budget of steps, tokens or epochs (got {', '.join(given) or 'none'})")
        if self.steps is not None and self.warmup_steps >= self.steps:
            raise ValueError("warmup_steps must be smaller than steps")
        for domain, scale in (self.budget_scale or {}).items():
            if not re.match(NAME_PATTERN, domain):
                raise ValueError(f"budget_scale: '{domain}' is not a domain name (lowercase letters, digits, - and _)")
            if not 0.0 < scale <= 100.0:  # pydantic has made it a float
                raise ValueError(f"budget_scale: {domain}'s scale must be a number above 0 and at most 100, not {scale!r}")
        return self

    def resolve(self, tokens_per_step: int, domain_tokens: Mapping[str, int]) -> Budget:
        """The budget in steps for this data; each domain gets an equal share of every step."""
        if not domain_tokens or min(domain_tokens.values()) <= 0:
            raise ValueError("a training phase needs at least one domain with training tokens")
        n = len(domain_tokens)
        if self.steps is not None:
            planned = self.steps
        elif self.tokens is not None:
            planned = math.ceil(self.tokens / tokens_per_step)
        else:
            assert self.epochs is not None
            planned = math.ceil(self.epochs * sum(domain_tokens.values()) / tokens_per_step)
        scale = 1.0
        if self.budget_scale:
            if n != 1:
                raise ValueError("budget_scale is for a phase that trains one domain at a time (the branches), "
                                 f"not a mixture of {n}")
            scale = float(self.budget_scale.get(next(iter(domain_tokens)), 1.0))
            planned = max(1, round(planned * scale))
        steps = planned
        if self.max_epochs is not None:
            # uniform mixture: the smallest domain is the one repeated most
            cap = math.floor(self.max_epochs * n * min(domain_tokens.values()) / tokens_per_step)
            steps = max(1, min(planned, cap))
        # a budget cut short (or resolved small) keeps its warmup a small share of the run
        warmup = self.warmup_steps if self.warmup_steps < max(steps // 2, 1) else steps // 10
        epochs = {d: steps * tokens_per_step / n / t for d, t in domain_tokens.items()}
        return Budget(steps=steps, warmup_steps=warmup, planned_steps=planned, capped=steps < planned, epochs=epochs,
                      scale=scale)


class ValidationConfig(StrictModel):
    """Validation during training: bits per byte on the val split, early stopping, best-checkpoint selection.

    The model kept is the best one validation saw, the starting point
    included: an expert is never saved worse, on its own domain, than the
    model it was branched from.
    """

    every_steps: int | None = Field(
        default=None, ge=1, description="Validate every this many optimiser steps (None: never; the last step is kept).")
    patience: int | None = Field(
        default=None, ge=1, description="Stop after this many validations without improvement (None: never stop early).")
    tokens_per_domain: int = Field(default=8192, ge=64, description="Validation tokens per domain.")
    min_delta: float = Field(default=0.0, ge=0.0, description="An improvement is at least this many bits per byte.")

class DataConfig(StrictModel):
    val_fraction: float = Field(default=0.05, gt=0.0, lt=0.5)
    test_fraction: float = Field(default=0.05, gt=0.0, lt=0.5)
    near_duplicate_threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    tokenizer_train_chars_per_domain: int = Field(
        default=2_000_000, ge=1000, description="Characters per domain the BPE is trained on (balanced mixture)."
    )


class SpeedConfig(StrictModel):
    """How training runs fast, never what it computes: every setting here keeps the phase's budget,
    global batch and schedule, so a model trained with any of them is comparable at the same tokens.

    ``auto`` picks what measured fastest on the device (``moe_experts.modeling.speed``); each
    setting can be forced. Not part of the preset's fingerprint: a workspace trained one way is
    reused when the preset is later run another way, and each manifest records what was used.
    """

    compile: Literal["auto", "on", "off"] = Field(
        default="auto", description="torch.compile the training step (auto: for phases of at least "
        "compile_min_steps steps; a failure falls back to eager with one warning). Also --no-compile or "
        "MOE_EXPERTS_COMPILE=0.")
    compile_min_steps: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto", description="With compile auto, the shortest phase that is compiled (auto: 500 steps on "
        "a GPU, 1,500 on a CPU). On 2 CPU cores with tiny a cold compile cost 37-46 s and saved 45 ms a step: "
        "the 400-step seed trained in 43.7 s eager and 71.9 s compiled, the 1,000-step generalist in 106.2 s "
        "eager, 85.5 s compiled with a warm compiler cache and 129.9 s with a cold one.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="bf16 autocast over fp32 weights, or plain fp32 (auto: bf16 on a GPU that "
        "supports it and on CPUs with native bf16, AMX or AVX512-BF16; fp32 otherwise).")
    attention: Literal["auto", "sdpa", "eager"] = Field(
        default="auto", description="Attention kernel while training (auto: sdpa on GPU, eager on CPU, where it "
        "measured faster at these sizes).")
    micro_batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto", description="Sequences per forward pass; gradient accumulation keeps the preset's batch "
        "(auto: the whole per-device batch, halved on a GPU until a step fits in memory). Must divide it.")
    fused_adamw: bool = Field(default=True, description="torch's fused AdamW (same update, one kernel).")
    dataloader_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        default="auto", description="Worker processes cutting training blocks (auto: 2 on GPU, 0 on CPU).")
    parallel_branches: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto", description="Expert branches trained side by side, one process each (auto: up to 4 on "
        "one GPU, one per GPU with several; 1 on CPU, where four branches two at a time took 58.0 s against 61.2 s).")

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `on` / `off` as true / false: `speed: {compile: off}` means "off".
        if isinstance(value, bool):
            return "on" if value else "off"
        return value


class Preset(StrictModel):
    """Everything about a workspace's starter models: sizes, vocabulary, training budgets."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str
    vocab_size: int = Field(ge=300, description="Byte-level BPE vocabulary (256 bytes + merges + specials).")
    seq_len: int = Field(ge=8)
    batch_size: int = Field(ge=1, description="Sequences per device per optimiser step (before accumulation).")
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    model: ModelShape
    seed_phase: PhaseConfig
    branch_phase: PhaseConfig
    generalist_learning_rate: float = Field(gt=0.0, le=1.0)
    generalist_warmup_steps: int = Field(default=0, ge=0)
    generalist_decay: Decay | None = Field(
        default=None, description="The generalist's decay after warmup (None: cosine to 0.1 of the peak).")
    validation: ValidationConfig = ValidationConfig()
    branch_trunk: Literal["train", "frozen"] = Field(
        default="train",
        description="frozen: branches train only their FFNs, sharing the seed's attention, norms, embeddings and "
        "head (DEMix); the token-level merge is then exact.")
    parameter_matched_generalist: bool = False
    save_steps: int = Field(default=200, ge=1)
    logging_steps: int = Field(default=10, ge=1)
    eval_tokens_per_domain: int = Field(default=32_768, ge=1, description="Validation tokens per domain in the check.")
    seed: int = 1234
    data: DataConfig = DataConfig()
    speed: SpeedConfig = SpeedConfig()

    def fingerprint(self) -> str:
        """Every field but ``speed``: how fast a model trained is not what it was trained from.

        Fields added after workspaces existed are left out at their neutral value (None), so an upgrade
        does not make every model trained before read as stale."""
        return hash_json(self.recorded(exclude={"speed"}))

    def recorded(self, exclude: set[str] = frozenset()) -> dict[str, Any]:
        """The preset as JSON less ``exclude``, with fields added after workspaces existed left out where unset
        (``generalist_decay``, a phase's ``budget_scale``): what hashes of a preset are taken over."""
        data = self.model_dump(mode="json", exclude=set(exclude))
        if data.get("generalist_decay") is None:
            data.pop("generalist_decay", None)
        for phase in ("seed_phase", "branch_phase"):
            if phase in data and data[phase].get("budget_scale") is None:
                data[phase].pop("budget_scale", None)
        return data

    @model_validator(mode="after")
    def _seed_is_one_mixture(self) -> Preset:
        if self.seed_phase.budget_scale:
            raise ValueError("seed_phase.budget_scale: the seed trains on the mixture of every domain at once; "
                             "a per-domain budget belongs in branch_phase.budget_scale")
        return self

    @model_validator(mode="after")
    def _micro_batch_divides(self) -> Preset:
        micro = self.speed.micro_batch_size
        if isinstance(micro, int) and (self.batch_size * self.gradient_accumulation_steps) % micro:
            raise ValueError(
                f"speed.micro_batch_size {micro} does not divide the batch of {self.batch_size} x "
                f"{self.gradient_accumulation_steps} accumulation steps; pick a divisor, or auto")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size * self.gradient_accumulation_steps

    def generalist_phase(self, tokens: int) -> PhaseConfig:
        """The compute-matched generalist: trained on the mixture for ``tokens`` tokens (what seed and branches consumed)."""
        steps = max(1, math.ceil(tokens / self.tokens_per_step))
        decay = self.generalist_decay or Decay()
        return PhaseConfig(
            steps=steps,
            learning_rate=self.generalist_learning_rate,
            warmup_steps=min(self.generalist_warmup_steps, steps - 1),
            weight_decay=self.seed_phase.weight_decay,
            schedule=decay.schedule,
            min_lr_ratio=decay.min_lr_ratio,
        )


def shipped_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> Preset:
    """A shipped preset by name (``tiny``) or any preset YAML by path."""
    path = Path(name_or_path)
    if not (path.suffix in {".yaml", ".yml"} and path.exists()):
        path = PRESETS_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(
                f"unknown preset '{name_or_path}'",
                hint=f"use one of {', '.join(shipped_presets())}, or a path to a preset YAML",
            )
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a preset must be a YAML mapping")
    try:
        return Preset.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc), hint=f"edit {path}") from exc


def hash_json(value: Any) -> str:
    """A stable short hash of JSON-able data (sorted keys)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_yaml_model(path: Path | None, model: Any) -> Any:
    """``model`` from a YAML file, or the model's built-in defaults when ``path`` is None.

    The library never looks for a file in the current folder: the CLI names the repository's
    recipe files (router_training/, eval/suites.yaml) when they are there.
    An empty file means the defaults; anything else must be a mapping. Errors name the file and field.
    """
    if path is None:
        return model()
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc), hint=f"edit {path}") from exc
