"""Router recipes: how ``train-router`` builds each kind of router (YAML in router_training/, validated here).

Like cards and presets (``config.py``), every recipe is strict and frozen, so a
typo fails at load time with the file and field named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from moe_experts.config import PhaseConfig, Preset, StrictModel, _Schedule, hash_json, load_yaml_model

RECIPES_DIR = Path("router_training")  # the repository's recipes, relative to where the CLI runs


class IndexRecipe(StrictModel):
    """The FAISS index of embedded training documents."""

    approximate_above: int = Field(
        default=10_000, ge=1, description="Exact inner-product search up to this many documents, approximate above."
    )
    approximate_kind: Literal["hnsw", "ivf"] = "hnsw"
    hnsw_m: int = Field(default=32, ge=4)
    hnsw_ef_construction: int = Field(default=80, ge=8)
    hnsw_ef_search: int = Field(default=64, ge=1)
    ivf_nprobe: int = Field(default=32, ge=1)
    recall_k: int = Field(default=10, ge=1)
    min_recall: float = Field(default=0.95, gt=0.0, le=1.0, description="Refuse an approximate index below this recall.")


class LexicalRecipe(StrictModel):
    """The lexical scorer of the ``hybrid`` method: tf-idf of word n-grams and a logistic regression on them."""

    ngram_max: int = Field(default=2, ge=1, le=3, description="Word n-grams of 1 up to this many words.")
    min_df: int = Field(default=2, ge=1, description="Keep n-grams seen in at least this many training documents.")
    max_features: int = Field(default=200_000, ge=100, description="Keep at most this many n-grams, the most frequent.")
    c: float = Field(default=10.0, gt=0.0, description="Inverse L2 strength of its logistic regression.")


class PrototypeRecipe(StrictModel):
    """The card prototypes' share of the ``hybrid`` method: a softmax over the similarity of a request to each
    card's mean vector (its positive examples and its description)."""

    weight: float = Field(default=0.25, ge=0.0, lt=1.0, description="Their share of the hybrid mixture; the "
                          "rest is split evenly between logreg, kNN and the lexical scorer. 0 turns them off.")
    scale: float = Field(default=20.0, gt=0.0, description="Sharpness of their softmax over cosine similarities.")


class ClassifierRecipe(StrictModel):
    """Scorers over the embeddings (logistic regression, a kNN vote over FAISS neighbours) and, for ``hybrid``,
    over the words; the one with the lowest validation log loss is kept."""

    method: Literal["auto", "logreg", "knn", "combined", "hybrid"] = Field(
        default="auto", description="auto: whichever of logreg, knn, their average (combined) and the average of "
        "those two with the lexical scorer and the card prototypes (hybrid) has the lowest validation log loss.",
    )
    logreg_c: float = Field(default=10.0, gt=0.0, description="Inverse L2 strength of the logistic regression.")
    knn_k: int = Field(default=10, ge=1)
    lexical: LexicalRecipe = LexicalRecipe()
    prototypes: PrototypeRecipe = PrototypeRecipe()
    calibration: Literal["temperature", "isotonic"] = "temperature"


class WindowsRecipe(StrictModel):
    """How much of a long request the router reads: its first ``max`` windows of the embedder's 256 tokens.

    The training documents are always embedded whole. A request's first windows usually say its domain,
    and every further window costs as much as the first, so ``auto`` picks, on validation, the fewest
    windows that route as accurately as reading everything (within ``tolerance``).
    """

    max: int | Literal["auto"] | None = Field(
        default="auto", description="Windows embedded per request: a number, 'auto' (chosen on validation), or "
        "null for every window.")
    candidates: list[int] = Field(default=[1, 2, 4], min_length=1, description="The numbers 'auto' tries.")
    tolerance: float = Field(
        default=0.0, ge=0.0, le=1.0, description="'auto' takes the fewest windows whose validation accuracy is "
        "at most this far below reading every window (on tiny, 0.002 chose 1 window: 0.35 points lost on test).")

    @model_validator(mode="after")
    def _check(self) -> WindowsRecipe:
        if isinstance(self.max, int) and self.max < 1:
            raise ValueError("windows.max must be at least 1 (or 'auto', or null for every window)")
        if any(c < 1 for c in self.candidates):
            raise ValueError("windows.candidates must all be at least 1")
        return self


class AbstainRecipe(StrictModel):
    """When the router hands a request to the fallback (general) expert instead of its top guess."""

    max_abstain_rate: float = Field(
        default=0.05, ge=0.0, le=1.0,
        description="The confidence threshold is tuned on validation for accuracy, abstaining on at most this share.",
    )
    far_quantile: float = Field(
        default=0.002, ge=0.0, lt=0.5,
        description="A request whose nearest training document is less similar than this quantile of validation "
        "documents' nearest similarities is 'far from every training document'.",
    )
    no_domain_per_kind: int = Field(
        default=30, ge=0,
        description="Synthetic no-domain texts per kind (emoji, number tables, other scripts and languages, ...) made "
        "from the train split to fit the 'no domain' gate and from validation to tune it; 0: no gate.",
    )
    max_no_domain_abstain_rate: float = Field(
        default=0.01, ge=0.0, le=1.0,
        description="The gate's threshold lets at most this share of in-domain validation documents abstain.",
    )
    no_domain_c: float = Field(default=10.0, gt=0.0, description="Inverse L2 strength of the gate's logistic model.")


class UnsupervisedRecipe(StrictModel):
    """c-BTM style: k-means clusters of the embeddings, mapped to experts by the validation majority."""

    clusters: int = Field(default=16, ge=2)
    iterations: int = Field(default=25, ge=1)


class DocRouterRecipe(StrictModel):
    """How ``moe-experts train-router --kind doc`` builds the document-level router."""

    kind: Literal["doc"] = "doc"
    embedder: str = Field(default="default", description="'default' (bundled all-MiniLM-L6-v2), a local folder, or a "
                          "Hugging Face id in the local cache (downloaded only with --online).")
    embed_batch_size: int = Field(default=64, ge=1)
    # On CPU embedding is the slow part (~10-60 documents/s on 2 cores), so by default
    # the router learns from a deterministic sample; null indexes everything (GPU).
    max_train_documents_per_domain: int | None = Field(
        default=500, ge=10, description="Sample at most this many training documents per domain (by content hash)."
    )
    max_val_documents_per_domain: int | None = Field(default=150, ge=10)
    index: IndexRecipe = IndexRecipe()
    classifier: ClassifierRecipe = ClassifierRecipe()
    abstain: AbstainRecipe = AbstainRecipe()
    windows: WindowsRecipe = WindowsRecipe()
    unsupervised: UnsupervisedRecipe = UnsupervisedRecipe()
    seed: int = 0


class TokenTraining(_Schedule):
    """The token router's training phase; the peak learning rate defaults to the one the experts were trained at.

    Measured on ``tiny`` (600 steps, every weight trained): at the experts' own
    5e-3 the MoE reached 2.282 bits per byte (macro), at a fixed 1e-3 only 2.393,
    worse than the generalist's 2.336. A merged model is a continuation of its
    experts' training, not a fine-tune of a finished model.
    """

    steps: int = Field(default=600, ge=1)
    learning_rate: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Peak learning rate [the preset's branch-phase learning rate].")
    warmup_steps: int = Field(default=20, ge=0)
    weight_decay: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _check(self) -> TokenTraining:
        if self.warmup_steps >= self.steps:
            raise ValueError("warmup_steps must be smaller than steps")
        return self

    def phase(self, preset: Preset) -> PhaseConfig:
        """The phase with the learning rate resolved against ``preset``."""
        return PhaseConfig(**{**self.model_dump(), "learning_rate": self.learning_rate or preset.branch_phase.learning_rate})


# fields added to the token recipe after routers were built, at the values that train as before (see fingerprint)
_TRAINS_AS_BEFORE = {"router_z_loss_coef": 0.0, "gate_learning_rate_scale": 1.0}


class TokenRouterRecipe(StrictModel):
    """How ``moe-experts train-router --kind token`` merges the experts into a sparse MoE and trains its gates."""

    kind: Literal["token"] = "token"
    include_seed: bool = Field(default=False, description="Add the seed's FFN as one more MoE expert.")
    merge_rest: Literal["average", "seed"] = Field(
        default="average", description="Attention, norms and embeddings: averaged across the experts (BTX), or the seed's.")
    gate_init: Literal["hidden", "random"] = Field(
        default="hidden", description="hidden: each expert's mean MoE-input hidden state on its own domain; random: N(0, 0.02).")
    gate_init_blocks_per_domain: int = Field(default=16, ge=1, description="Training blocks per domain for the hidden-state means.")
    train: Literal["gates", "all"] = Field(
        default="all", description="all: every weight (BTX); gates: the gates only, everything else frozen.")
    top_k: int = Field(default=2, ge=1, description="Experts per token.")
    router_aux_loss_coef: float = Field(default=0.01, ge=0.0, description="Weight of the load-balancing loss.")
    router_z_loss_coef: float = Field(
        default=0.0, ge=0.0, description="Weight of the router z-loss (ST-MoE): the mean squared log-sum-exp of the "
        "gates' logits, averaged over layers; it keeps the logits small. 0: off.")
    gate_learning_rate_scale: float = Field(
        default=1.0, gt=0.0, le=1000.0, description="The gates' learning rate as a multiple of the training one "
        "(same schedule); with train: all, the experts and the rest keep the training rate.")
    training: TokenTraining = TokenTraining()
    health_blocks_per_domain: int = Field(default=16, ge=1, description="Validation blocks per domain for the health check.")
    dead_expert_share: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="An expert under this share of a layer's tokens is dead.")
    seed: int = 0

    def recorded(self, exclude: frozenset[str] = frozenset()) -> dict:
        """The fields as JSON, less those added after routers were built while they hold the values that train as
        before they existed: upgrading neither makes a token router stale nor blocks the resume of a run."""
        data = self.model_dump(mode="json", exclude=set(exclude))
        for name, value in _TRAINS_AS_BEFORE.items():
            if data.get(name) == value:
                del data[name]
        return data

    def fingerprint(self) -> str:
        """As for any config, over ``recorded()``."""
        return hash_json(self.recorded())


def load_token_recipe(path: Path | None) -> TokenRouterRecipe:
    """A token-router recipe YAML (None: the built-in defaults)."""
    return load_yaml_model(path, TokenRouterRecipe)


def load_recipe(path: Path | None) -> DocRouterRecipe:
    """A document-router recipe YAML (None: the built-in defaults)."""
    return load_yaml_model(path, DocRouterRecipe)
