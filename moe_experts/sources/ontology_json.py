"""Ontology terms with definitions, read from the JSON files that cellxgene-ontology-guide ships.

The package (MIT) bundles compact JSON exports of biomedical ontologies, one file per
ontology and release, ``data/<ONTOLOGY>-ontology-<version>.json.gz``: a mapping from term
id to ``{label, description, synonyms, deprecated, ...}``. The ``medicine`` card reads
MONDO (the Monarch disease ontology, CC BY 4.0): about 17,000 disease definitions written
as prose, which neither HPO's phenotype terms nor ICD-10's code titles cover. UBERON
(anatomy), CL (cell types) and EFO ship in the same format and read the same way.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from moe_experts.sources.base import RawDocument, Source, SourceParams, package_version, sentence

PACKAGE = "cellxgene_ontology_guide"
DISTRIBUTION = "cellxgene-ontology-guide"
_FILE = re.compile(r"^(?P<ontology>[A-Za-z]+)-ontology-(?P<version>.+)\.json(?:\.gz)?$")


def _data_dir() -> Path | None:
    """The data folder of the installed cellxgene-ontology-guide, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data"


def shipped_files(ontology: str) -> list[Path]:
    """The files of ``ontology`` that the installed package ships, oldest release first."""
    data = _data_dir()
    if data is None or not data.is_dir():
        return []
    found = [p for p in data.iterdir() if (m := _FILE.match(p.name)) and m["ontology"] == ontology]
    # releases are named v<date> or <major>.<minor>...: compare the digit groups as numbers
    return sorted(found, key=lambda p: [int(g) for g in re.findall(r"\d+", _FILE.match(p.name)["version"])])


class OntologyJSONSource(Source):
    """One document per live ontology term that has a definition: ``label: definition`` and its synonyms."""

    kind: ClassVar[str] = "ontology_json"
    install_hint: ClassVar[str] = (
        "pip install cellxgene-ontology-guide (or point 'path' at an ontology JSON file), "
        "or drop source 'ontology_json' from the card"
    )

    class Params(SourceParams):
        kind: Literal["ontology_json"] = "ontology_json"
        ontology: str = Field(
            default="MONDO", pattern=r"^[A-Za-z]+$",
            description="Which ontology's file to read (MONDO, UBERON, CL, EFO, ...); the newest release shipped.",
        )
        path: Path | None = Field(
            default=None,
            description="An ontology JSON (.json or .json.gz) in that format; default: the package's newest file.",
        )
        require_definition: bool = Field(default=True, description="Skip terms that have no definition.")

    params: Params  # narrows the base attribute for type checkers

    def _path(self) -> Path | None:
        if self.params.path is not None:
            return self.params.path.expanduser().resolve()
        files = shipped_files(self.params.ontology)
        return files[-1] if files else None

    def check(self) -> None:
        path = self._path()
        if path is None and _data_dir() is None:
            raise self.unavailable(f"package {DISTRIBUTION} is not installed, so there is no ontology file to read")
        if path is None:
            raise self.unavailable(
                f"{DISTRIBUTION} {package_version(DISTRIBUTION)} ships no {self.params.ontology} file",
                hint=f"set 'ontology' to one it ships ({', '.join(self._shipped()) or 'none'}) "
                "or point 'path' at a file",
            )
        if not path.is_file():
            raise self.unavailable(f"no ontology file at {path}")

    @staticmethod
    def _shipped() -> list[str]:
        data = _data_dir()
        names = {m["ontology"] for p in data.iterdir() if (m := _FILE.match(p.name))} if data and data.is_dir() else set()
        return sorted(names)

    def _load(self) -> dict[str, Any]:
        self.check()
        path = self._path()
        assert path is not None  # check() refused otherwise
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt", encoding="utf-8") as handle:
                terms = json.load(handle)
        except (OSError, ValueError) as exc:
            raise self.unavailable(f"{path} is not a readable ontology JSON ({exc})") from exc
        if not isinstance(terms, dict):
            raise self.unavailable(f"{path} is not an ontology JSON: expected an object of terms by id")
        return terms

    def _documents(self) -> Iterator[RawDocument]:
        terms = self._load()
        for term_id in sorted(terms):
            term = terms[term_id]
            if not isinstance(term, dict) or term.get("deprecated"):
                continue
            text = self._term_text(term)
            if text is not None:
                yield RawDocument(text=text, source=self.kind, ref=term_id)

    def _term_text(self, term: dict[str, Any]) -> str | None:
        label = " ".join(str(term.get("label") or "").split())
        definition = " ".join(str(term.get("description") or "").split())
        if not label or (self.params.require_definition and not definition):
            return None
        text = f"{label}: {sentence(definition)}" if definition else sentence(label)
        synonyms: list[str] = []
        for value in term.get("synonyms") or []:
            synonym = " ".join(str(value).split())
            if synonym and synonym.lower() != label.lower() and synonym not in synonyms:
                synonyms.append(synonym)
        if synonyms:
            text += f" Also known as {'; '.join(synonyms)}."
        return text

    def fingerprint(self) -> dict[str, Any]:
        path = self._path()
        match = _FILE.match(path.name) if path is not None else None
        return {
            **super().fingerprint(),
            "resolved_path": str(path) if path else None,
            "package_version": package_version(DISTRIBUTION),
            "data_version": match["version"] if match else None,
        }
