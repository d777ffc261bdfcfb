"""Pinned licence sources: what else is installed must not change the corpus (issue 11, "results that reproduce").

Without a list, ``package_licenses`` reads every installed distribution and ``debian_copyright`` every
``/usr/share/doc/*/copyright``, so one more ``pip install`` or ``apt-get install`` changes the law corpus.
These tests install one more distribution or package in a temporary folder and compare corpus hashes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from moe_experts.config import DataConfig, load_registry
from moe_experts.data.build import build_corpora, domain_manifest
from moe_experts.sources import Source, build_source
from moe_experts.sources.licenses import DebianCopyrightSource, PackageLicensesSource, normalize_name
from moe_experts.errors import SourceUnavailableError
from moe_experts.workspace import Workspace
from tests.conftest import REPO, card, general_english
from tests.unit.test_sources import make, write_copyrights, write_dist_infos

# Hard dependencies of the project, so installed wherever the tests run.
PINNED = ["click", "PyYAML", "pydantic"]
EXTRA_LICENCE = (
    "Extra Licence 1.0. Permission is granted to frobnicate this software, provided that every frobnication "
    "is reported to the Extra Foundation in writing within thirty days."
)


def fake_distribution(root: Path, name: str, version: str, licence: str) -> Path:
    """A minimal installed distribution in ``root``: METADATA, LICENSE and the RECORD that lists them."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    (info / "LICENSE").write_text(licence + "\n", encoding="utf-8")
    (info / "RECORD").write_text(
        "".join(f"{info.name}/{file},,\n" for file in ("METADATA", "LICENSE", "RECORD")), encoding="utf-8"
    )
    return root


@pytest.fixture
def extra_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One more distribution on sys.path, as ``pip install`` of an unrelated package would leave."""
    site = fake_distribution(tmp_path / "extra-site", "zz-extra-licensed", "1.0", EXTRA_LICENCE)
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])


def snapshot(source: Source) -> list[tuple[str, str]]:
    source.check()
    return [(doc.ref, doc.text) for doc in source.documents()]


# --------------------------------------------------------------------------- package_licenses


def test_extra_distribution_changes_unpinned_documents_but_not_pinned(
    request: pytest.FixtureRequest,
) -> None:
    pinned = make(PackageLicensesSource, distributions=PINNED, include_common_licenses=False)
    unpinned = make(PackageLicensesSource, include_common_licenses=False)
    before_pinned, before_unpinned = snapshot(pinned), snapshot(unpinned)
    assert {ref.split("/")[0] for ref, _ in before_pinned} <= {"dist:click", "dist:pyyaml", "dist:pydantic"}

    request.getfixturevalue("extra_installed")
    assert snapshot(pinned) == before_pinned
    after_unpinned = snapshot(unpinned)
    assert after_unpinned != before_unpinned  # the check above could fail: the extra licence is read
    assert ("dist:zz-extra-licensed/LICENSE", EXTRA_LICENCE) in after_unpinned


def test_pinned_names_compare_pep503_style_and_a_later_copy_does_not_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = write_dist_infos(tmp_path)  # Alpha-Pkg 1.0 and beta 2.0
    spellings = [snapshot(make(PackageLicensesSource, site_packages=[site], distributions=[name],
                               include_common_licenses=False)) for name in ("alpha_pkg", "Alpha.Pkg", "ALPHA-PKG")]
    assert spellings[0] and spellings[0] == spellings[1] == spellings[2]
    assert {ref for ref, _ in spellings[0]} == {"dist:alpha-pkg/LICENSE"}

    # A second click further down sys.path is not the one Python imports: the pinned source ignores it.
    source = make(PackageLicensesSource, distributions=["click"], include_common_licenses=False)
    before, version = snapshot(source), source.fingerprint()["versions"]["click"]
    shadowed = fake_distribution(tmp_path / "later", "click", "0.0.1", EXTRA_LICENCE)
    monkeypatch.setattr(sys, "path", [*sys.path, str(shadowed)])
    assert snapshot(source) == before
    assert source.fingerprint()["versions"] == {"click": version}
    # Put first, it is the one installed: its licence is read and the manifest names the new version.
    monkeypatch.setattr(sys, "path", [str(shadowed), *sys.path])
    assert snapshot(source) == [("dist:click/LICENSE", EXTRA_LICENCE)]
    assert source.fingerprint()["versions"] == {"click": "0.0.1"}


def test_pinned_distribution_not_installed_is_unavailable_by_name_with_the_fix() -> None:
    source = make(PackageLicensesSource, distributions=["click", "no-such-distribution"])
    with pytest.raises(SourceUnavailableError, match="no-such-distribution") as info:
        source.check()
    assert "click" not in info.value.message
    assert "pip install no-such-distribution" in info.value.hint and "'distributions'" in info.value.hint
    assert source.fingerprint()["versions"]["no-such-distribution"] is None


# --------------------------------------------------------------------------- debian_copyright


def test_extra_debian_package_changes_unpinned_documents_but_not_pinned(tmp_path: Path) -> None:
    pattern = write_copyrights(tmp_path)  # packages demo and other
    pinned = make(DebianCopyrightSource, glob=pattern, packages=["demo", "other"])
    unpinned = make(DebianCopyrightSource, glob=pattern)
    before_pinned, before_unpinned = snapshot(pinned), snapshot(unpinned)
    assert before_pinned == before_unpinned
    hashes = pinned.fingerprint()["sha256"]

    # apt-get install extra; sorted before the pinned ones, so unpinned its paragraphs would come first.
    (tmp_path / "doc" / "aardvark").mkdir()
    (tmp_path / "doc" / "aardvark" / "copyright").write_text(f"{EXTRA_LICENCE}\n", encoding="utf-8")
    assert snapshot(pinned) == before_pinned
    assert pinned.fingerprint()["sha256"] == hashes
    assert snapshot(unpinned) == [("aardvark", EXTRA_LICENCE), *before_unpinned]

    # A pinned package whose text changed (a new version) is named by the fingerprint.
    (tmp_path / "doc" / "other" / "copyright").write_text("Other terms, revised.\n", encoding="utf-8")
    changed = pinned.fingerprint()["sha256"]
    assert changed["demo"] == hashes["demo"] and changed["other"] != hashes["other"]


def test_pinned_debian_package_missing_is_unavailable_by_name_with_the_fix(tmp_path: Path) -> None:
    source = make(DebianCopyrightSource, glob=write_copyrights(tmp_path), packages=["demo", "not-installed"])
    with pytest.raises(SourceUnavailableError, match="not-installed") as info:
        source.check()
    assert "apt-get install not-installed" in info.value.hint and "'packages'" in info.value.hint
    assert source.fingerprint()["sha256"]["not-installed"] is None


# --------------------------------------------------------------------------- the corpus manifest


def write_law_cards(folder: Path, law_sources: list[dict[str, Any]]) -> Path:
    """Cards of a two-domain corpus: law (``law_sources`` plus local legal text) and general."""
    folder.mkdir()
    # Enough documents of its own that the law domain has all three splits whatever the licences add.
    legal = folder / "legal.txt"
    legal.write_text("\n".join(general_english(300, seed=7)) + "\n")
    general = folder / "general.txt"
    general.write_text("\n".join(general_english(200, seed=3)) + "\n")
    local = {"kind": "local", "format": "txt", "unit": "line"}
    cards = [
        card("law", [{**local, "path": str(legal)}, *law_sources]),
        card("general", [{**local, "path": str(general)}], fallback=True),
    ]
    for c in cards:
        (folder / f"{c['name']}.yaml").write_text(yaml.safe_dump(c, sort_keys=False))
    return folder


def build(cards: Path, workspace: Path, *, strict: bool = False) -> dict[str, Any]:
    """The corpus manifest of a build into a new workspace, with the law domain's manifest under "law"."""
    ws = Workspace(workspace)
    ws.root.mkdir()
    manifest = build_corpora(ws, load_registry(cards), DataConfig(), strict=strict)
    return {**manifest, "law": domain_manifest(ws, "law")}


def test_corpus_hash_ignores_an_extra_distribution_only_when_pinned(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pinned = write_law_cards(
        tmp_path / "pinned", [{"kind": "package_licenses", "distributions": PINNED, "include_common_licenses": False}]
    )
    unpinned = write_law_cards(tmp_path / "unpinned", [{"kind": "package_licenses", "include_common_licenses": False}])
    before = {"pinned": build(pinned, tmp_path / "p0"), "unpinned": build(unpinned, tmp_path / "u0")}
    request.getfixturevalue("extra_installed")
    after = {"pinned": build(pinned, tmp_path / "p1"), "unpinned": build(unpinned, tmp_path / "u1")}

    assert after["pinned"]["corpus_hash"] == before["pinned"]["corpus_hash"]
    assert after["unpinned"]["corpus_hash"] != before["unpinned"]["corpus_hash"]
    recorded = after["pinned"]["law"]["sources"][1]["fingerprint"]
    assert set(recorded["versions"]) == {normalize_name(name) for name in PINNED}
    assert all(recorded["versions"].values())


def test_a_missing_pinned_distribution_skips_the_source_or_fails_a_strict_build(tmp_path: Path) -> None:
    sources = [{"kind": "package_licenses", "distributions": ["click", "no-such-distribution"]}]
    cards = write_law_cards(tmp_path / "cards", sources)
    with pytest.raises(SourceUnavailableError, match="expert 'law'.*no-such-distribution"):
        build(cards, tmp_path / "strict", strict=True)
    # Not strict: the source is reported unavailable and reads nothing, never the distributions that are there.
    report = build(cards, tmp_path / "lenient")["law"]["sources"][1]
    assert not report["available"] and "no-such-distribution" in report["error"] and report["raw_documents"] == 0


# --------------------------------------------------------------------------- the shipped card


def shipped_law_sources() -> dict[str, Any]:
    law = next(c for c in load_registry(REPO / "experts").cards if c.name == "law")
    return {params.kind: params for params in law.corpus.sources}


def test_shipped_law_card_pins_both_installed_software_sources() -> None:
    sources = shipped_law_sources()
    assert sources["package_licenses"].distributions
    assert sources["debian_copyright"].packages
    # Every pinned distribution is a dependency of the project, so a clean install has it.
    build_source(sources["package_licenses"]).check()


def _debian_release() -> str | None:
    try:
        return Path("/etc/debian_version").read_text().split(".")[0].strip()
    except OSError:
        return None


@pytest.mark.skipif(_debian_release() != "12", reason="the card pins the packages of a bare Debian 12 image")
def test_shipped_law_card_debian_packages_are_installed_on_debian_12() -> None:
    build_source(shipped_law_sources()["debian_copyright"]).check()
