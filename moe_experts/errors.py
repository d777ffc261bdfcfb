"""One exception tree for the library; the CLI turns it into a message and an exit code.

Every error names what is wrong and how to fix it. Library code raises these
and never exits; only the CLI decides exit codes.

A setting the caller chooses is named in backticks as the library calls it
(`resume`, `top_k`), never as a flag: a Python caller reads the keyword it
passes, and the CLI shows each such name as its flag (--resume, --top-k).
"""

from __future__ import annotations

from typing import Any


class MoeExpertsError(Exception):
    """Base of every error the library raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # an error raised in a worker process (experts trained in parallel) keeps its hint when pickled back
        return (_rebuild, (type(self), self.message, self.hint))


def _rebuild(cls: type[MoeExpertsError], message: str, hint: str | None) -> MoeExpertsError:
    return cls(message, hint=hint)


class ConfigError(MoeExpertsError):
    """A card, preset or recipe is malformed, or a flag names something unknown."""

    exit_code = 2


class UnknownDomainError(ConfigError):
    """A domain or expert name that no card declares."""


class DataError(MoeExpertsError):
    """Corpus building failed: a source is missing, a domain is too small, a split is empty."""

    exit_code = 3


class SourceUnavailableError(DataError):
    """A corpus source named in a card is not installed or not readable on this machine."""


class WorkspaceError(MoeExpertsError):
    """The workspace folder is unusable: not writable, built for another preset, or stale."""

    exit_code = 4


class MissingArtifactError(WorkspaceError):
    """A stage needs an artifact that has not been built yet."""


class StaleArtifactError(WorkspaceError):
    """An artifact exists but was built from other inputs than the workspace holds now."""


class CheckpointError(MoeExpertsError):
    """A model checkpoint is missing, corrupted, or does not match what it should be."""

    exit_code = 5


class TrainingError(MoeExpertsError):
    """Training could not start or continue (for example leftover checkpoints without --resume)."""

    exit_code = 6


class RequestError(MoeExpertsError):
    """A request to ``ask`` is unusable: empty, not UTF-8, too large, or names an unknown expert."""

    exit_code = 2
