"""Behaviour of every corpus source on small fixtures in the real formats, plus smoke tests on installed data."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from moe_experts.sources import SOURCES, Source
from moe_experts.sources.gcide import GcideSource, decode_number
from moe_experts.sources.hpo import HPOSource
from moe_experts.sources.icd10 import ICD10Source
from moe_experts.sources.licenses import (
    DebianCopyrightSource,
    PackageLicensesSource,
)
from moe_experts.sources.local import LocalFilesSource
from moe_experts.sources.ontology_json import OntologyJSONSource
from moe_experts.sources.python_code import PythonStdlibSource
from moe_experts.sources.wordnet import WordNetSource
from moe_experts.errors import SourceUnavailableError


def make(cls: type[Source], **params: Any) -> Source:
    return cls(cls.Params(**params))


def texts(source: Source) -> list[str]:
    return [doc.text for doc in source.documents()]


# --------------------------------------------------------------------------- fixtures in the real formats

OBO = r"""format-version: 1.2
data-version: hp/releases/2025-01-16
remark: Please see license of HPO

[Term]
id: HP:0000001
name: All
comment: Root of all terms in the Human Phenotype Ontology.

[Term]
id: HP:0000002
name: Abnormality of body height
def: "Deviation from the norm of height that is \"expected\" for age." [https://orcid.org/0000-0002-0736-9199]
comment: Height is measured standing
synonym: "Abnormality of body height" EXACT layperson []
synonym: "Height abnormality" EXACT []
synonym: "monoallelic_autosomal" EXACT HP:0034334 []
is_a: HP:0000001 ! All

[Term]
id: HP:0000003
name: obsolete Multicystic kidney
def: "A retired term." []
is_obsolete: true

[Term]
id: HP:0000004
name: Onset
synonym: "Age of onset" EXACT []

[Typedef]
id: part_of
name: part of
"""

def icd_item(kind: str, name: str, description: str, *children: str) -> str:
    inner = "".join(children)
    return f'<item type="{kind}">\n<name>{name}</name><description>{description}</description>{inner}</item>'


# Like the real file: a BOM, nested blocks, subcategories inside subcategories, a messy description.
ICD_XML = "\ufeff<icd_10_v2019>\n\t" + icd_item(
    "chapter", "II", "Neoplasms",
    icd_item(
        "block", "C00-C97", "Malignant neoplasms",
        icd_item(
            "block", "C00-C14", "Lip, oral cavity and pharynx",
            icd_item(
                "category", "C00", "Malignant neoplasm of lip",
                icd_item("subcategory", "C00.0", "External upper lip",
                         icd_item("subcategory", "C00.00", "Vermilion border :  upper\n lip")),
                icd_item("subcategory", "C00.9", "Lip, unspecified"),
            ),
        ),
        icd_item("category", "C97", "Malignant neoplasms of independent (primary) multiple sites"),
    ),
) + "\n</icd_10_v2019>\n"

WORDNET_HEADER = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  \n"
    "  3   \n"
    "  4 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.  \n"
)
WORDNET_FILES = {
    "data.noun": [
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 | that which is "
        "perceived or known or inferred to have its own distinct existence (living or nonliving)  ",
        "00001930 03 n 01 physical_entity 0 002 @ 00001740 n 0000 ~ 00002452 n 0000 | an entity that has physical "
        "existence  ",
        "00015388 05 n 03 animal 0 animate_being 0 beast 0 001 @ 00004475 n 0000 | a living organism characterized "
        "by voluntary movement  ",
    ],
    "data.verb": [
        "00002325 29 v 01 respire 1 002 $ 00001740 v 0000 @ 02108395 v 0000 01 + 02 00 | undergo the biomedical "
        "processes of respiration  ",
        "00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 001 * 00005041 v 0000 02 + 02 00 + 08 03 | "
        'draw air into, and expel out of, the lungs; "I can breathe better when the air is clean"  ',
    ],
    "data.adj": [
        "00014358 00 s 02 abounding 0 galore(ip) 0 001 & 00013887 a 0000 | existing in abundance; "
        '"abounding confidence"; "whiskey galore"  ',
        "00001740 00 a 01 able 0 001 ! 00002098 a 0101 | (usually followed by `to') having the necessary means  ",
    ],
}


def write_obo(tmp_path: Path) -> Path:
    path = tmp_path / "hp.obo"
    path.write_text(OBO, encoding="utf-8")
    return path


def write_icd(tmp_path: Path) -> Path:
    path = tmp_path / "icd.xml"
    path.write_text(ICD_XML, encoding="utf-8")
    return path


def write_wordnet(tmp_path: Path) -> Path:
    root = tmp_path / "wordnet"
    root.mkdir()
    for name, lines in WORDNET_FILES.items():
        (root / name).write_text(WORDNET_HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    return root


def b64(number: int) -> str:
    """dictd's base64 digits, the inverse of decode_number."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digits = ""
    while True:
        digits = alphabet[number % 64] + digits
        number //= 64
        if number == 0:
            return digits


GCIDE_ENTRIES = [
    ("00-database-info", "00-database-info\n   Converted from the original database.\n   GCIDE is free software.\n\n"),
    (
        "Abase",
        'Abase \\A*base"\\ ([.a]*b[=a]s"), v. t. [imp. & p. p. {Abased} ([.a]*b[=a]st");\n'
        "   p. pr. & vb. n. {Abasing}.] [F. abaisser.]\n"
        "   1. To lower or depress; to throw or cast down. [Obs.]\n"
        "      [1913 Webster]\n\n"
        "            Saying so, he abased his lance.      --Shelton.\n"
        "      [1913 Webster]\n\n"
        "   2. To reduce or lower, as in rank, office, or\n"
        "      estimation; to humble; to degrade.\n"
        "      [1913 Webster +PJC] Abasement\n\n",
    ),
    ("Cafe", "Caf['e] \\Caf`['e]\\, n. [F.] A coffee house; a restaurant. See {[AE]sop}.\n   [Webster 1913 Suppl.]\n"),
]


def write_gcide(tmp_path: Path) -> Path:
    root = tmp_path / "dictd"
    root.mkdir()
    data, index = b"", []
    for headword, body in GCIDE_ENTRIES:
        raw = body.encode("utf-8")
        span = f"{b64(len(data))}\t{b64(len(raw))}"
        index.append(f"{headword}\t{span}")
        if headword == "Abase":
            index.append(f"Abased\t{span}")  # a second headword on the same slice
        if headword.startswith("00-"):
            index.append(f"2:{headword}\t{span}")
        data += raw
    # The index is sorted by headword, not by offset; documents must come in file order.
    (root / "gcide.index").write_text("\n".join(sorted(index, key=str.lower)) + "\n", encoding="utf-8")
    with gzip.open(root / "gcide.dict.dz", "wb") as handle:
        handle.write(data)
    return root


GPL_PARAGRAPH = (
    "This program is free software; you can redistribute it and/or modify\n"
    "it under the terms of the GNU General Public License as published by\n"
    "the Free Software Foundation; either version 2 of the License, or\n"
    "(at your option) any later version."
)


def write_dist_infos(tmp_path: Path) -> Path:
    site = tmp_path / "site-packages"
    alpha = site / "alpha_pkg-1.0.dist-info"
    alpha.mkdir(parents=True)
    (alpha / "METADATA").write_text("Metadata-Version: 2.1\nName: Alpha-Pkg\nVersion: 1.0\n", encoding="utf-8")
    (alpha / "LICENSE").write_text(f"Alpha licence.\n\n{GPL_PARAGRAPH}\n", encoding="utf-8")
    (alpha / "RECORD").write_text("", encoding="utf-8")
    beta = site / "beta-2.0.dist-info"
    (beta / "licenses").mkdir(parents=True)
    (beta / "METADATA").write_text(
        "Metadata-Version: 2.4\nName: beta\nVersion: 2.0\nLicense-File: COPYING\nLicense-File: EXTRA_TERMS\n"
        "License-File: AUTHORS.txt\n",
        encoding="utf-8",
    )
    # Same GPL paragraph, wrapped and cased differently: still a duplicate once normalised.
    gpl_again = " ".join(GPL_PARAGRAPH.split()).replace("This program", "THIS program")
    (beta / "licenses" / "COPYING").write_text(f"Beta notice.\n\n{gpl_again}\n\nBeta warranty.\n", encoding="utf-8")
    (beta / "licenses" / "EXTRA_TERMS").write_text("Extra terms apply to the data files.\n", encoding="utf-8")
    (beta / "licenses" / "AUTHORS.txt").write_text("Jane Doe\nJohn Doe\n", encoding="utf-8")
    return site


DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: demo
Upstream-Contact: Jane Doe <jane@example.org>
Source: https://example.org/demo

Files: *
Copyright: 2001-2020 Jane Doe <jane@example.org>
License: GPL-2+

License: GPL-2+
 This program is free software; you can redistribute it and/or modify
 it under the terms of the GNU General Public License as published by
 the Free Software Foundation; either version 2 of the License, or
 (at your option) any later version.
 .
 On Debian systems, the full text is in /usr/share/common-licenses/GPL-2.
Comment:
 The demo logo is not covered by this licence.
"""

FREE_FORM = """This package was debianized by John Roe <john@example.org> on Mon, 1 Jan 2001.

It was downloaded from
    https://example.org/other/

Copyright (C) 1999 John Roe
(C) 2000 Other Holder
\u00a9 2001 Third Holder

This program is free software; you can redistribute it and/or modify
it under the terms of the GNU General Public License as published by
the Free Software Foundation; either version 2 of the License, or
(at your option) any later version.
 */

Permission is granted to use the other package for any purpose.
"""


def write_copyrights(tmp_path: Path) -> str:
    for package, text in (("demo", DEP5), ("other", FREE_FORM)):
        (tmp_path / "doc" / package).mkdir(parents=True)
        (tmp_path / "doc" / package / "copyright").write_text(text, encoding="utf-8")
    return str(tmp_path / "doc" / "*" / "copyright")


# --------------------------------------------------------------------------- per-source behaviour


def test_python_stdlib_reads_sorted_py_files_and_skips_excluded_big_and_undecodable(tmp_path: Path) -> None:
    for rel, content in {
        "b.py": "print('b')\n",
        "a/z.py": "Z = 1\n",
        "a/m.py": "M = 2\n",
        "test/t.py": "T = 3\n",
        "a/__pycache__/c.py": "C = 4\n",
        "notes.txt": "not python\n",
        "big.py": "X = 0\n" * 100,
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content, encoding="utf-8")
    (tmp_path / "latin.py").write_bytes(b"S = '\xe9'\n")
    source = make(PythonStdlibSource, path=tmp_path, max_file_bytes=200)
    source.check()
    docs = list(source.documents())
    assert [d.ref for d in docs] == ["a/m.py", "a/z.py", "b.py"]
    assert docs[0].text == "M = 2\n" and docs[0].source == "python_stdlib"
    assert source.fingerprint()["resolved_path"] == str(tmp_path.resolve())


def test_hpo_parses_terms_skipping_root_obsolete_and_undefined(tmp_path: Path) -> None:
    source = make(HPOSource, path=write_obo(tmp_path))
    source.check()
    docs = list(source.documents())
    assert [d.ref for d in docs] == ["HP:0000002"]
    assert docs[0].text == (
        'Abnormality of body height. Deviation from the norm of height that is "expected" for age. '
        "Height is measured standing. Synonyms: Height abnormality."
    )
    assert source.fingerprint()["data_version"] == "hp/releases/2025-01-16"
    lenient = make(HPOSource, path=tmp_path / "hp.obo", require_definition=False)
    assert texts(lenient)[1] == "Onset. Synonyms: Age of onset."


def test_icd10_builds_category_documents_with_hierarchy_and_nested_subcategories(tmp_path: Path) -> None:
    source = make(ICD10Source, path=write_icd(tmp_path))
    docs = list(source.documents())
    assert [d.ref for d in docs] == ["C00", "C97"]
    assert docs[0].text == (
        "C00 Malignant neoplasm of lip. Chapter II: Neoplasms. Block C00-C97: Malignant neoplasms. "
        "Block C00-C14: Lip, oral cavity and pharynx.\n"
        "C00.0 External upper lip.\n"
        "C00.00 Vermilion border: upper lip.\n"
        "C00.9 Lip, unspecified."
    )
    # The inner block C00-C14 is closed again: C97 sits directly in C00-C97.
    assert docs[1].text == (
        "C97 Malignant neoplasms of independent (primary) multiple sites. Chapter II: Neoplasms. "
        "Block C00-C97: Malignant neoplasms."
    )


def test_wordnet_parses_words_and_glosses_and_groups_by_lexicographer_file(tmp_path: Path) -> None:
    source = make(WordNetSource, path=write_wordnet(tmp_path))
    docs = list(source.documents())
    assert [d.ref for d in docs] == [
        "data.noun:00001740", "data.noun:00015388", "data.verb:00002325", "data.adj:00014358"
    ]
    assert docs[0].text == (
        "entity (noun): that which is perceived or known or inferred to have its own distinct existence "
        "(living or nonliving)\nphysical entity (noun): an entity that has physical existence"
    )
    assert docs[1].text == "animal, animate being, beast (noun): a living organism characterized by voluntary movement"
    assert docs[2].text.splitlines()[1] == (
        "breathe, take a breath, respire, suspire (verb): draw air into, and expel out of, the lungs; "
        '"I can breathe better when the air is clean"'
    )
    assert docs[3].text.splitlines() == [
        'abounding, galore (adjective): existing in abundance; "abounding confidence"; "whiskey galore"',
        "able (adjective): (usually followed by 'to') having the necessary means",
    ]
    assert source.fingerprint()["wordnet_version"] == "3.0"
    small = make(WordNetSource, path=tmp_path / "wordnet", max_chars_per_doc=50)
    assert len(list(small.documents())) == 7  # every entry is longer than 50 characters


def test_gcide_decodes_index_and_cleans_markup(tmp_path: Path) -> None:
    assert decode_number("Kj") == 675 and b64(675) == "Kj"
    source = make(GcideSource, path=write_gcide(tmp_path))
    source.check()
    docs = list(source.documents())
    assert [d.ref for d in docs] == ["Abase", "Cafe"]
    assert docs[0].text == (
        "Abase, v. t. [imp. & p. p. Abased; p. pr. & vb. n. Abasing.] [F. abaisser.]\n"
        "1. To lower or depress; to throw or cast down. [Obs.]\n\n"
        "Saying so, he abased his lance. --Shelton.\n\n"
        "2. To reduce or lower, as in rank, office, or estimation; to humble; to degrade."
    )
    assert docs[1].text == "Café, n. [F.] A coffee house; a restaurant. See Æsop."


def test_package_licenses_dedups_paragraphs_across_distributions(tmp_path: Path) -> None:
    common = tmp_path / "common-licenses"
    common.mkdir()
    (common / "GPL-2").write_text(f"{GPL_PARAGRAPH}\n\nThe full GPL text.\n", encoding="utf-8")
    source = make(PackageLicensesSource, site_packages=[write_dist_infos(tmp_path)], common_licenses_dir=common)
    source.check()
    docs = {d.ref: d.text for d in source.documents()}
    assert list(docs) == ["dist:alpha-pkg/LICENSE", "dist:beta/COPYING", "dist:beta/EXTRA_TERMS", str(common / "GPL-2")]
    assert docs["dist:alpha-pkg/LICENSE"] == f"Alpha licence.\n\n{GPL_PARAGRAPH}"
    assert docs["dist:beta/COPYING"] == "Beta notice.\n\nBeta warranty."
    assert docs[str(common / "GPL-2")] == "The full GPL text."
    without_common = make(
        PackageLicensesSource, site_packages=[tmp_path / "site-packages"], include_common_licenses=False
    )
    assert len(list(without_common.documents())) == 3


def test_package_licenses_fails_only_when_nothing_is_found(tmp_path: Path) -> None:
    source = make(PackageLicensesSource, site_packages=[tmp_path], common_licenses_dir=tmp_path / "none")
    with pytest.raises(SourceUnavailableError, match="package_licenses"):
        source.check()


def test_debian_copyright_keeps_prose_and_drops_headers_and_copyright_lines(tmp_path: Path) -> None:
    source = make(DebianCopyrightSource, glob=write_copyrights(tmp_path))
    source.check()
    docs = list(source.documents())
    assert [d.ref for d in docs] == ["demo", "other"]
    assert docs[0].text == (
        f"{GPL_PARAGRAPH}\n\nOn Debian systems, the full text is in /usr/share/common-licenses/GPL-2.\n\n"
        "The demo logo is not covered by this licence."
    )
    # The GPL paragraph was already yielded for "demo"; holders, URLs and comment residue are gone.
    assert docs[1].text == (
        "This package was debianized by John Roe <john@example.org> on Mon, 1 Jan 2001.\n\n"
        "It was downloaded from\n\n"
        "Permission is granted to use the other package for any purpose."
    )


def test_debian_copyright_parses_stanzas_after_a_free_form_preamble(tmp_path: Path) -> None:
    (tmp_path / "hybrid").mkdir()
    (tmp_path / "hybrid" / "copyright").write_text(
        "This package was debianized by Ann Roe <ann@example.org> on\nFri, 17 Jan 2003 14:57:28 +0900.\n\n"
        "Files: *\nCopyright:\n \u00a9 2002 Someone <s@example.org>\n .\n  Icons\n  =====\n"
        "License: MIT\n Permission is hereby granted, free of charge.\n",
        encoding="utf-8",
    )
    docs = list(make(DebianCopyrightSource, glob=str(tmp_path / "*" / "copyright")).documents())
    assert [(d.ref, d.text) for d in docs] == [("hybrid", "Permission is hereby granted, free of charge.")]


def write_ontology_json(tmp_path: Path) -> Path:
    """A MONDO file in cellxgene-ontology-guide's format: one live term, one without a definition, one deprecated."""
    import json

    terms = {
        "MONDO:0000602": {"label": "autoimmune disorder  of blood", "deprecated": False,
                          "description": "A hypersensitivity reaction type II disease that involves the blood",
                          "synonyms": ["blood autoimmune disease", "Autoimmune disorder of blood",
                                       "blood autoimmune disease"], "ancestors": {"MONDO:0000001": 1}},
        "MONDO:0000001": {"label": "disease", "deprecated": False, "ancestors": {}},
        "MONDO:0000601": {"label": "obsolete autoimmune disorder", "description": "OBSOLETE. Gone.",
                          "deprecated": True, "ancestors": {}},
    }
    path = tmp_path / "MONDO-ontology-v2024-05-08.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump(terms, handle)
    return path


def test_ontology_json_reads_live_defined_terms_in_id_order(tmp_path: Path) -> None:
    source = make(OntologyJSONSource, path=write_ontology_json(tmp_path))
    source.check()
    docs = list(source.documents())
    assert [d.ref for d in docs] == ["MONDO:0000602"]
    # whitespace collapsed, a full stop added, synonyms deduplicated and the label's own case-variant dropped
    assert docs[0].text == ("autoimmune disorder of blood: A hypersensitivity reaction type II disease that involves "
                            "the blood. Also known as blood autoimmune disease.")
    assert source.fingerprint()["data_version"] == "v2024-05-08"
    lenient = make(OntologyJSONSource, path=tmp_path / "MONDO-ontology-v2024-05-08.json.gz", require_definition=False)
    assert texts(lenient) == ["disease.", docs[0].text]


def test_ontology_json_refuses_a_file_that_is_not_an_ontology(tmp_path: Path) -> None:
    bad = tmp_path / "MONDO-ontology-v1.json"
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(SourceUnavailableError, match="expected an object of terms"):
        list(make(OntologyJSONSource, path=bad).documents())
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(SourceUnavailableError, match="not a readable ontology JSON"):
        list(make(OntologyJSONSource, path=bad).documents())


# --------------------------------------------------------------------------- properties shared by all sources


MISSING = [
    (PythonStdlibSource, {"path": "/nonexistent/stdlib"}),
    (HPOSource, {"path": "/nonexistent/hp.obo"}),
    (ICD10Source, {"path": "/nonexistent/icd.xml"}),
    (OntologyJSONSource, {"path": "/nonexistent/MONDO-ontology-v1.json.gz"}),
    (PackageLicensesSource, {"site_packages": ["/nonexistent"], "common_licenses_dir": "/nonexistent"}),
    (DebianCopyrightSource, {"glob": "/nonexistent/*/copyright"}),
    (WordNetSource, {"path": "/nonexistent/wordnet"}),
    (GcideSource, {"path": "/nonexistent/dictd"}),
    (LocalFilesSource, {"path": "/nonexistent/*.txt"}),
]


@pytest.mark.parametrize(("cls", "params"), MISSING, ids=[cls.kind for cls, _ in MISSING])
def test_missing_data_raises_unavailable_with_kind_path_and_hint(cls: type[Source], params: dict[str, Any]) -> None:
    with pytest.raises(SourceUnavailableError, match=f"'{cls.kind}'") as info:
        make(cls, **params).check()
    assert "/nonexistent" in info.value.message
    assert info.value.hint


def fixture_sources(tmp_path: Path) -> list[Source]:
    (tmp_path / "py").mkdir()
    for name in ("a.py", "b.py", "c.py"):
        (tmp_path / "py" / name).write_text(f"NAME = {name!r}\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("one\ntwo\nthree\n", encoding="utf-8")
    return [
        make(PythonStdlibSource, path=tmp_path / "py"),
        make(HPOSource, path=write_obo(tmp_path), require_definition=False),
        make(ICD10Source, path=write_icd(tmp_path)),
        make(OntologyJSONSource, path=write_ontology_json(tmp_path), require_definition=False),
        make(PackageLicensesSource, site_packages=[write_dist_infos(tmp_path)], include_common_licenses=False),
        make(DebianCopyrightSource, glob=write_copyrights(tmp_path)),
        make(WordNetSource, path=write_wordnet(tmp_path)),
        make(GcideSource, path=write_gcide(tmp_path)),
        make(LocalFilesSource, path=str(tmp_path / "notes.txt"), unit="line"),
    ]


def test_order_is_deterministic_and_limit_stops_early(tmp_path: Path) -> None:
    for source in fixture_sources(tmp_path):
        first = list(source.documents())
        assert len(first) >= 2, source.kind
        assert first == list(source.documents()), source.kind
        assert all(doc.source == source.kind and doc.text.strip() for doc in first)
        limited = type(source)(source.params.model_copy(update={"limit": 1}))
        assert list(limited.documents()) == first[:1], source.kind
        assert source.fingerprint()["kind"] == source.kind


REQUIRED = {"local": {"path": "x"}, "hf_dataset": {"name": "x"}}


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_params_reject_unknown_fields(kind: str) -> None:
    params_cls = SOURCES[kind].Params
    assert params_cls(**REQUIRED.get(kind, {})).kind == kind
    with pytest.raises(ValidationError, match="bogus"):
        params_cls(**REQUIRED.get(kind, {}), bogus=1)
