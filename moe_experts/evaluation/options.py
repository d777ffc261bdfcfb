"""What ``eval`` is asked to do: one frozen options object, its defaults the CLI's defaults.

Kept free of heavy imports so that the command line can read its defaults at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moe_experts.errors import ConfigError


@dataclass(frozen=True)
class EvalOptions:
    domains: tuple[str, ...] | None = None  # None: every card's domain
    systems: tuple[str, ...] | None = None  # names or glob patterns (expert:*); None: all
    max_docs: int | None = None  # per domain
    top_k: int = 2  # the mixture system; 1 = no mixture
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    speed_prompts: int = 4  # prompts for generation tokens/s (0: not measured)
    latency_requests: int = 50  # requests for routing latency (0: not measured)
    suites: bool = True
    suite_recipe: Path | None = None
    source_held_out: int = 0  # documents a held-out corpus source (0: not measured; it fits one router per source)

    def check(self) -> None:
        if self.max_docs is not None and self.max_docs < 1:
            raise ConfigError(f"max_docs must be at least 1, got {self.max_docs}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {self.top_k}")
        if self.resamples < 100:
            raise ConfigError(f"resamples must be at least 100 for a usable interval, got {self.resamples}")
        if self.source_held_out < 0:
            raise ConfigError(f"source_held_out must be 0 (off) or a number of documents, got {self.source_held_out}")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"confidence must be in [0.5, 1), got {self.confidence}")


DEFAULTS = EvalOptions()
