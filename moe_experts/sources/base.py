"""The corpus-source plugin interface.

A source turns something installed on the machine (a package's data file, a
Debian package, a local file, a Hugging Face dataset) into raw documents. Each
source declares a strict pydantic ``Params`` model whose ``kind`` literal is the
name a card uses; cards are validated against the union of all registered
``Params`` once, when they are loaded.

Sources yield natural units (a file, an ontology term, a dictionary group);
cleaning, chunking to the card's size limits, deduplication and splitting happen
centrally in ``moe_experts.data.build``.
"""

from __future__ import annotations

import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from moe_experts.errors import SourceUnavailableError


class SourceParams(BaseModel):
    """Options every source accepts; each source subclasses this with its own ``kind``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    limit: int | None = Field(
        default=None, ge=1, description="Stop after this many raw documents (in the source's own order)."
    )


@dataclass(frozen=True)
class RawDocument:
    """One unit of text as a source yields it, before cleaning and chunking."""

    text: str
    source: str  # the source kind, e.g. "hpo"
    ref: str  # where inside the source it came from, e.g. "HP:0000003" or a file path


class Source(ABC):
    """Base class of a corpus source. Subclasses set ``kind`` and ``Params``."""

    kind: ClassVar[str]
    Params: ClassVar[type[SourceParams]]
    install_hint: ClassVar[str] = ""

    def __init__(self, params: SourceParams) -> None:
        self.params = params

    @abstractmethod
    def check(self) -> None:
        """Raise SourceUnavailableError (naming the source and how to install it) if unusable."""

    @abstractmethod
    def _documents(self) -> Iterator[RawDocument]:
        """Yield raw documents in a deterministic order."""

    def documents(self) -> Iterator[RawDocument]:
        """Yield raw documents, honouring ``limit``."""
        limit = self.params.limit
        for i, doc in enumerate(self._documents()):
            if limit is not None and i >= limit:
                return
            yield doc

    def fingerprint(self) -> dict[str, Any]:
        """What this source was read from (paths, package versions); recorded in manifests."""
        return {"kind": self.kind, **self.params.model_dump(mode="json", exclude={"kind"})}

    def unavailable(self, what: str, *, hint: str | None = None) -> SourceUnavailableError:
        """Build the error for a missing source, with ``hint`` or else this source's install hint."""
        return SourceUnavailableError(
            f"corpus source '{self.kind}' is not available: {what}",
            hint=hint or self.install_hint or None,
        )


def sentence(text: str) -> str:
    """End a fragment with a full stop so that the parts of a document read as consecutive sentences."""
    return text if text.endswith((".", "!", "?")) else f"{text}."


def package_version(distribution: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
