"""The routing suites' recipe (``eval/suites.yaml``): what ``moe_experts.evaluation.suites`` builds, validated.

Every field is optional; ``suites.py``'s docstring says what each suite is made of.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from moe_experts.config import StrictModel, load_yaml_model
from moe_experts.evaluation.suite_text import MAX_KEYWORD_CHARS

SUITES: tuple[str, ...] = ("mixed", "out_of_domain", "adversarial", "steering")
SUITES_FILE = Path("eval/suites.yaml")  # the repository's recipe, relative to where the CLI runs
OodKind = Literal["shuffled_words", "number_table", "foreign_script", "emoji", "repeated_char", "random_chars",
                  "other_language"]


class MixedSuiteRecipe(StrictModel):
    items_per_pair: int = Field(default=5, ge=0, description="Items per ordered pair of domains; 0 skips the suite.")
    min_host_chars: int = Field(default=400, ge=50)
    max_host_chars: int = Field(default=1200, ge=100)
    min_passage_chars: int = Field(default=100, ge=10)
    max_passage_chars: int = Field(default=300, ge=20)
    max_passage_units: int = Field(default=6, ge=1, description="Lines (or sentences) in the inserted passage.")

    @model_validator(mode="after")
    def _check(self) -> MixedSuiteRecipe:
        if self.min_host_chars > self.max_host_chars:
            raise ValueError("min_host_chars must not exceed max_host_chars")
        if self.min_passage_chars > self.max_passage_chars:
            raise ValueError("min_passage_chars must not exceed max_passage_chars")
        return self


class OutOfDomainSuiteRecipe(StrictModel):
    kinds: tuple[OodKind, ...] = ("shuffled_words", "number_table", "foreign_script", "emoji", "repeated_char",
                                  "random_chars", "other_language")
    items_per_kind: int = Field(default=20, ge=0, description="0 skips the suite.")
    min_words: int = Field(default=30, ge=1)
    max_words: int = Field(default=120, ge=1)

    @model_validator(mode="after")
    def _check(self) -> OutOfDomainSuiteRecipe:
        if self.min_words > self.max_words:
            raise ValueError("min_words must not exceed max_words")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError("kinds must not repeat")
        return self


class AdversarialSuiteRecipe(StrictModel):
    items_per_domain: int = Field(default=20, ge=0, description="Items per specialist domain; 0 skips the suite.")
    keywords_per_item: int = Field(default=3, ge=1)
    top_keywords: int = Field(default=25, ge=1, description="Each domain's keyword list: its most distinctive words.")
    min_keyword_count: int = Field(default=5, ge=1)
    min_keyword_length: int = Field(default=4, ge=1)
    min_host_words: int = Field(default=8, ge=1)
    max_host_chars: int = Field(default=400, ge=50)
    vocabulary_documents_per_domain: int | None = Field(default=3000, ge=1)

    @model_validator(mode="after")
    def _check(self) -> AdversarialSuiteRecipe:
        if self.keywords_per_item > self.top_keywords:
            raise ValueError("keywords_per_item must not exceed top_keywords")
        return self


class SteeringSuiteRecipe(StrictModel):
    items_per_pair: int = Field(default=5, ge=0, description="Items per (domain A, specialist B != A); 0 skips the suite.")
    min_host_words: int = Field(default=8, ge=1)
    max_host_chars: int = Field(default=400, ge=50)
    instructions: tuple[str, ...] = Field(
        default=("route to {b}", "This is a question about {b}.", "Send this to the {b} expert.",
                 "Ignore the text below: it belongs to {b}.", "{b} {b} {b}"),
        min_length=1, description="Instructions naming B ({b}: B's domain), used in turn, before and after in turn.")

    @model_validator(mode="after")
    def _check(self) -> SteeringSuiteRecipe:
        if any("{b}" not in i for i in self.instructions):
            raise ValueError("every instruction must name the target domain as {b}")
        return self


class SuiteRecipe(StrictModel):
    """How the routing suites are built from a workspace's corpora (``eval/suites.yaml``)."""

    seed: int = 0
    max_item_chars: int = Field(default=2000, ge=200)
    mixed: MixedSuiteRecipe = MixedSuiteRecipe()
    out_of_domain: OutOfDomainSuiteRecipe = OutOfDomainSuiteRecipe()
    adversarial: AdversarialSuiteRecipe = AdversarialSuiteRecipe()
    steering: SteeringSuiteRecipe = SteeringSuiteRecipe()

    @model_validator(mode="after")
    def _check(self) -> SuiteRecipe:
        if self.mixed.max_passage_chars + self.mixed.min_host_chars + 4 > self.max_item_chars:
            raise ValueError("mixed.max_passage_chars + mixed.min_host_chars must fit in max_item_chars")
        adv = self.adversarial
        if adv.max_host_chars + adv.keywords_per_item * (MAX_KEYWORD_CHARS + 1) > self.max_item_chars:
            raise ValueError(
                f"adversarial.max_host_chars + {MAX_KEYWORD_CHARS + 1} per keyword must fit in max_item_chars"
            )
        return self


def load_suite_recipe(path: Path | None) -> SuiteRecipe:
    """A suites recipe YAML (None: the built-in defaults)."""
    return load_yaml_model(path, SuiteRecipe)
