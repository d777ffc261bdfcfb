"""Corpus sources and their explicit registry (the lowest layer: cards in config.py validate against it).

A card's ``corpus.sources`` entries are validated against the ``Params`` of the
sources listed here; adding a source kind means adding a module and a line below.
"""

from __future__ import annotations

from moe_experts.sources.base import RawDocument, Source, SourceParams
from moe_experts.sources.gcide import GcideSource
from moe_experts.sources.hf_dataset import HFDatasetSource
from moe_experts.sources.hpo import HPOSource
from moe_experts.sources.icd10 import ICD10Source
from moe_experts.sources.licenses import DebianCopyrightSource, PackageLicensesSource
from moe_experts.sources.local import LocalFilesSource
from moe_experts.sources.man_pages import ManPagesSource
from moe_experts.sources.ontology_json import OntologyJSONSource
from moe_experts.sources.python_code import PythonStdlibSource
from moe_experts.sources.scancode import ScanCodeLicensesSource
from moe_experts.sources.wordnet import WordNetSource

SOURCES: dict[str, type[Source]] = {
    cls.kind: cls
    for cls in (
        PythonStdlibSource,
        HPOSource,
        ICD10Source,
        OntologyJSONSource,
        PackageLicensesSource,
        DebianCopyrightSource,
        ScanCodeLicensesSource,
        WordNetSource,
        GcideSource,
        ManPagesSource,
        LocalFilesSource,
        HFDatasetSource,
    )
}


def build_source(params: SourceParams) -> Source:
    """The source object for one validated card entry."""
    return SOURCES[params.kind](params)


__all__ = ["SOURCES", "RawDocument", "Source", "SourceParams", "build_source"]
