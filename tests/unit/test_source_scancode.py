"""The scancode_licenses source on a fixture folder in ScanCode's .LICENSE format, plus a smoke test on the real one."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from moe_experts.config import load_card
from moe_experts.sources import SOURCES, build_source, scancode
from moe_experts.sources.scancode import ScanCodeLicensesSource, default_licenses_dir
from moe_experts.errors import SourceUnavailableError
from tests.conftest import card


def make(**params: Any) -> ScanCodeLicensesSource:
    return ScanCodeLicensesSource(ScanCodeLicensesSource.Params(**params))


def refs_and_texts(source: ScanCodeLicensesSource) -> list[tuple[str, str]]:
    return [(doc.ref, doc.text) for doc in source.documents()]


DISCLAIMER = (
    'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.\n'
    "IN NO EVENT SHALL THE AUTHORS BE LIABLE FOR ANY CLAIM."
)

# Like the real files: front matter between "---" lines, a blank line, the text (often with no final newline).
LICENSE_FILES = {
    "alpha.LICENSE": (
        "---\nkey: alpha\nshort_name: Alpha License\nname: Alpha Public License 1.0\ncategory: Permissive\n"
        "owner: Alpha Org\nspdx_license_key: LicenseRef-scancode-alpha\nother_urls:\n"
        "    - https://example.org/alpha\n---\n\n"
        f"Permission is granted to use Alpha for any purpose.   \n\n{DISCLAIMER}"
    ),
    # Sorts after alpha by key (though "alpha-plus.LICENSE" < "alpha.LICENSE" by full file name), and repeats
    # alpha's disclaimer re-wrapped and with other case: dropped as a duplicate paragraph.
    "alpha-plus.LICENSE": (
        "---\nkey: alpha-plus\nshort_name: Alpha 1.0 or later\nname: Alpha Public License 1.0 or later\n"
        "category: Copyleft\nowner: Alpha Org\nnotes: |\n    Per the authors,\n    a copyleft variant.\n---\n\n"
        "Alpha Plus adds one condition:\nchanges must be shared.\n\n"
        + " ".join(DISCLAIMER.split()).replace("THE SOFTWARE", "The Software")
        + "\n"
    ),
    "gamma.LICENSE": (
        "---\nkey: gamma\nshort_name: Gamma\nname: Gamma License\ncategory: Permissive\nowner: Gamma\n"
        "is_deprecated: yes\nnotes: replaced by alpha\n---\n\nGamma may be copied.\n"
    ),
    "broken.LICENSE": (
        "---\nkey: broken\nname: Broken: [unclosed\ncategory: Permissive\n---\n\n"
        "Never read, the front matter is not YAML.\n"
    ),
    # ScanCode's detection placeholders: an is_unknown entry with no text, an is_generic one with a stub sentence.
    "unknown.LICENSE": (
        "---\nkey: unknown\nshort_name: unknown\nname: Unknown license detected but not recognized\n"
        "category: Unstated License\nowner: Unspecified\nis_unknown: yes\n---\n"
    ),
    "commercial-license.LICENSE": (
        "---\nkey: commercial-license\nshort_name: Commercial License\nname: Commercial License\n"
        "category: Commercial\nowner: Unspecified\nis_generic: yes\n---\n\n"
        "This component is licensed under a commercial contract from the supplier.\n"
    ),
    "README.rst": "Not a licence.\n",
}

ALPHA = (
    "scancode:alpha",
    f"Alpha Public License 1.0\n\nPermission is granted to use Alpha for any purpose.\n\n{DISCLAIMER}",
)
ALPHA_PLUS = (
    "scancode:alpha-plus",
    "Alpha Public License 1.0 or later\n\nAlpha Plus adds one condition:\nchanges must be shared.",
)
GAMMA = ("scancode:gamma", "Gamma License\n\nGamma may be copied.")


def write_licenses(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, text in LICENSE_FILES.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_reads_licences_in_key_order_with_name_line_and_paragraph_dedup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_licenses(tmp_path / "licenses")
    source = make(path=folder)
    source.check()
    with caplog.at_level(logging.INFO, logger=scancode.__name__):
        docs = list(source.documents())
    # Deprecated, broken, empty and stub placeholder files are skipped; nothing crashes on the broken one.
    assert [(d.ref, d.text) for d in docs] == [ALPHA, ALPHA_PLUS]
    assert all(d.source == "scancode_licenses" for d in docs)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "broken.LICENSE" in warnings[0]
    assert "'deprecated': 1, 'empty': 1, 'placeholder': 1, 'unparsable': 1" in caplog.records[-1].getMessage()
    assert refs_and_texts(source) == [ALPHA, ALPHA_PLUS]  # a second pass starts with a fresh deduper
    assert refs_and_texts(make(path=folder, limit=1)) == [ALPHA]
    fingerprint = source.fingerprint()
    assert fingerprint["resolved_path"] == str(folder.resolve())
    assert "licensedcode_data_version" in fingerprint


def test_include_deprecated(tmp_path: Path) -> None:
    source = make(path=write_licenses(tmp_path / "licenses"), include_deprecated=True)
    assert refs_and_texts(source) == [ALPHA, ALPHA_PLUS, GAMMA]


def test_category_filter_and_skipped_entries_do_not_feed_the_deduper(tmp_path: Path) -> None:
    folder = write_licenses(tmp_path / "licenses")
    # alpha is filtered out, so alpha-plus is the first to carry the disclaimer and keeps it.
    copyleft = refs_and_texts(make(path=folder, categories=["Copyleft"]))
    assert [ref for ref, _ in copyleft] == ["scancode:alpha-plus"]
    assert copyleft[0][1].startswith(ALPHA_PLUS[1] + "\n\nThe Software IS PROVIDED")
    permissive = make(path=folder, categories=["Permissive"], include_deprecated=True)
    assert refs_and_texts(permissive) == [ALPHA, GAMMA]
    assert refs_and_texts(make(path=folder, categories=["Public Domain"])) == []


def test_missing_or_empty_folder_is_unavailable_with_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.rst").write_text("no licences here\n", encoding="utf-8")
    for path, message in (
        (tmp_path / "nonexistent", f"no folder at {tmp_path / 'nonexistent'}"),
        (tmp_path / "empty", "no *.LICENSE files in"),
    ):
        with pytest.raises(SourceUnavailableError, match="'scancode_licenses'") as info:
            make(path=path).check()
        assert message in info.value.message
        assert info.value.hint == ScanCodeLicensesSource.install_hint
        assert "pip install licensedcode-data" in str(info.value)
    monkeypatch.setattr(scancode, "default_licenses_dir", lambda: None)
    with pytest.raises(SourceUnavailableError, match="licensedcode-data is not installed"):
        list(make().documents())


def test_default_path_is_found_in_a_namespace_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # licensedcode-data installs licensedcode/ without an __init__.py; ours comes first on sys.path.
    folder = write_licenses(tmp_path / "site" / "licensedcode" / "data" / "licenses")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert default_licenses_dir() == folder
    assert refs_and_texts(make()) == [ALPHA, ALPHA_PLUS]


def test_card_with_scancode_source_validates(tmp_path: Path) -> None:
    assert SOURCES["scancode_licenses"] is ScanCodeLicensesSource
    data = card("law", [{"kind": "scancode_licenses", "categories": ["Permissive", "Copyleft"], "limit": 50}])
    path = tmp_path / "law.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    params = load_card(path).corpus.sources[0]
    assert isinstance(params, ScanCodeLicensesSource.Params)
    assert (params.categories, params.include_deprecated, params.path) == (["Permissive", "Copyleft"], False, None)
    assert isinstance(build_source(params), ScanCodeLicensesSource)


@pytest.mark.skipif(default_licenses_dir() is None, reason="licensedcode-data is not installed")
def test_real_scancode_licenses() -> None:
    source = make()
    source.check()
    docs = list(source.documents())
    assert len(docs) > 1000
    assert len({d.ref for d in docs}) == len(docs)
    assert all("\n\n" in d.text and d.text.split("\n\n", 1)[1].strip() for d in docs)
    apache = next(d for d in docs if d.ref == "scancode:apache-2.0")
    assert apache.text.startswith("Apache License 2.0\n\n") and "TERMS AND CONDITIONS" in apache.text
    # The MIT warranty disclaimer is a paragraph of its own in dozens of ScanCode licences; after dedup, of one.
    mit = (default_licenses_dir() or Path()) / "mit.LICENSE"
    disclaimer = paragraphs(mit.read_text(encoding="utf-8"))[-1]
    assert disclaimer.startswith('the software is provided "as is"')
    raw = [path for path in mit.parent.glob("*.LICENSE") if disclaimer in paragraphs(path.read_text(encoding="utf-8"))]
    assert len(raw) > 20
    assert sum(disclaimer in paragraphs(d.text) for d in docs) == 1


def paragraphs(text: str) -> list[str]:
    """Paragraphs as the deduper compares them: whitespace collapsed, lower case."""
    return [" ".join(p.split()).lower() for p in re.split(r"\n[ \t]*\n", text)]
