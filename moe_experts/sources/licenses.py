"""Legal text (the ``law`` domain): licence files of installed Python distributions and Debian packages.

The same licence texts (GPL, Apache, BSD) are installed hundreds of times, so both sources drop
every paragraph they have already yielded once; what remains is each text once plus the
package-specific notices and exceptions around it.

Which distributions and packages are installed differs between machines (a dev extra, one more
``apt-get install``), so both sources take a list that pins what they read: ``distributions`` and
``packages``. A pinned source reads exactly that set or is unavailable; it never reads another one.
"""

from __future__ import annotations

import email.message
import email.parser
import glob
import hashlib
import importlib.metadata
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from moe_experts.sources.base import RawDocument, Source, SourceParams

_LICENCE_NAME = re.compile(r"^(licen[cs]e|copying|notice)", re.IGNORECASE)
# License-File entries sometimes list AUTHORS files: lists of names, not legal text.
_NOT_LEGAL = re.compile(r"^(authors|contributors)", re.IGNORECASE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# Lines of a free-form Debian copyright file that only say who holds the copyright.
_COPYRIGHT_LINE = re.compile(r"^(copyright\b|\(c\)|©)", re.IGNORECASE)
_ADDRESS = re.compile(r"<[^>\s]*>|\S+@\S+|(?:https?|ftp)://\S+|www\.\S+")
# DEP-5 files start with a Format field (Format-Specification in early drafts); some older files
# put a free-form preamble before DEP-5 style "Files:" stanzas and are parsed as DEP-5 too.
_MACHINE_READABLE = re.compile(r"\AFormat(?:-Specification)?:|^Files:", re.MULTILINE)
# DEP-5 fields whose text is prose; Files, Copyright, Upstream-Contact and the rest are name/year soup.
_PROSE_FIELDS = frozenset({"license", "disclaimer", "comment"})
_NAME_SEPARATORS = re.compile(r"[-_.]+")
# The first RECORD line inside a *.dist-info folder (RECORD is CSV; a path may be quoted).
_RECORD_DIST_INFO = re.compile(r'^"?([^/,"\n]+\.dist-info)/', re.MULTILINE)


def normalize_name(name: str) -> str:
    """A distribution name as PEP 503 compares it: ``PyYAML``, ``pyyaml`` and ``py_yaml`` are one name."""
    return _NAME_SEPARATORS.sub("-", name).lower()


class ParagraphDeduper:
    """Keeps each paragraph the first time it is seen; one instance lives for one pass of a source."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def filter(self, text: str) -> str:
        """``text`` without the paragraphs seen before, paragraphs separated by blank lines."""
        kept: list[str] = []
        for paragraph in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n")):
            key = " ".join(paragraph.split()).lower()
            if not key or key in self._seen:
                continue
            self._seen.add(key)
            kept.append(paragraph.strip("\n").rstrip())
        return "\n\n".join(kept)


def _read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # Older licence files are Latin-1 (author names with accents); every byte decodes.
        return data.decode("latin-1")


def _licence_files(folder: Path, listed: Iterable[str]) -> list[tuple[str, Path]]:
    """(display name, path) of the licence files of one ``*.dist-info`` folder, sorted by name."""
    candidates = [p for p in folder.iterdir() if p.is_file() and _LICENCE_NAME.match(p.name)]
    licences = folder / "licenses"  # PEP 639 keeps licence files here, with their source layout
    if licences.is_dir():
        candidates += [p for p in licences.rglob("*") if p.is_file() and _LICENCE_NAME.match(p.name)]
    for entry in listed:
        candidates += [p for p in (licences / entry, folder / entry) if p.is_file() and not _NOT_LEGAL.match(p.name)]
    found: dict[Path, str] = {}
    for path in candidates:
        base = licences if path.is_relative_to(licences) else folder
        found.setdefault(path.resolve(), path.relative_to(base).as_posix())
    return sorted(((name, path) for path, name in found.items()), key=lambda item: item[0])


@dataclass(frozen=True)
class _Distribution:
    name: str
    version: str | None
    folder: Path  # the *.dist-info folder, resolved
    license_files: tuple[str, ...]  # the METADATA License-File entries


class PackageLicensesSource(Source):
    """Licence files of installed Python distributions, then Debian's common licences, deduplicated by paragraph."""

    kind: ClassVar[str] = "package_licenses"
    install_hint: ClassVar[str] = (
        "install any Python packages with licence files, or point 'site_packages' at folders holding "
        "*.dist-info directories, or drop source 'package_licenses' from the card"
    )

    class Params(SourceParams):
        kind: Literal["package_licenses"] = "package_licenses"
        include_common_licenses: bool = True
        common_licenses_dir: Path = Path("/usr/share/common-licenses")
        site_packages: list[Path] | None = Field(
            default=None, description="Folders with *.dist-info directories; default: every installed distribution."
        )
        distributions: list[str] | None = Field(
            default=None,
            description="Read only these distributions (names compared PEP 503 style), each of which must be "
            "installed; default: every distribution found, which differs between machines.",
        )

    params: Params  # narrows the base attribute for type checkers

    def _found(self) -> list[_Distribution]:
        """Every distribution in search order (sys.path, or site_packages), deduplicated by folder."""
        found: dict[Path, _Distribution] = {}
        if self.params.site_packages is None:
            for dist in importlib.metadata.distributions():
                folder = _dist_info_folder(dist)
                if folder is not None:
                    name = dist.name or folder.name.split("-")[0]
                    license_files = tuple(dist.metadata.get_all("License-File") or ())
                    found.setdefault(folder, _Distribution(name, dist.version, folder, license_files))
        else:
            for root in self.params.site_packages:
                for folder in sorted(root.expanduser().glob("*.dist-info")):
                    meta = _read_metadata(folder)
                    name = meta.get("Name") or folder.name.split("-")[0]
                    license_files = tuple(meta.get_all("License-File") or ())
                    resolved = folder.resolve()
                    found.setdefault(resolved, _Distribution(name, meta.get("Version"), resolved, license_files))
        return list(found.values())

    def _distributions(self) -> tuple[list[_Distribution], list[str]]:
        """(the distributions to read, sorted by name; the pinned names that are not installed)."""
        found = self._found()
        missing: list[str] = []
        if self.params.distributions is not None:
            # The first of each name in search order, as import and importlib.metadata.version() pick:
            # a second copy further down sys.path is not what the program runs, and would change the set.
            first: dict[str, _Distribution] = {}
            for dist in found:
                first.setdefault(normalize_name(dist.name), dist)
            wanted = dict.fromkeys(normalize_name(name) for name in self.params.distributions)
            found = [first[name] for name in wanted if name in first]
            missing = [name for name in wanted if name not in first]
        return sorted(found, key=lambda d: (d.name.lower(), str(d.folder))), missing

    def _files(self) -> list[tuple[str, Path]]:
        """(ref, path) of every licence file, in the order they are yielded."""
        files = [
            (f"dist:{dist.name.lower()}/{file_name}", path)
            for dist in self._distributions()[0]
            for file_name, path in _licence_files(dist.folder, dist.license_files)
        ]
        common = self.params.common_licenses_dir
        if self.params.include_common_licenses and common.is_dir():
            files += [(str(path), path) for path in sorted(common.iterdir()) if path.is_file()]
        return files

    def _places(self) -> str:
        return ", ".join(str(p) for p in self.params.site_packages) if self.params.site_packages else "sys.path"

    def check(self) -> None:
        missing = self._distributions()[1]
        if missing:
            raise self.unavailable(
                f"pinned distribution(s) {', '.join(missing)} not installed (searched {self._places()})",
                hint=f"pip install {' '.join(missing)}, or drop them from the 'distributions' list of this source "
                "in the card",
            )
        if not self._files():
            places = [self._places()]
            if self.params.include_common_licenses:
                places.append(str(self.params.common_licenses_dir))
            raise self.unavailable(f"no licence files found in {', '.join(places)}")

    def _documents(self) -> Iterator[RawDocument]:
        deduper = ParagraphDeduper()
        for ref, path in self._files():
            text = deduper.filter(_read_text(path) or "")
            if text:
                yield RawDocument(text=text, source=self.kind, ref=ref)

    def fingerprint(self) -> dict[str, Any]:
        dists, missing = self._distributions()
        common = {"common_licenses_dir": str(self.params.common_licenses_dir.resolve())}
        if self.params.distributions is None:
            # Whatever is installed: a count and the folders say roughly what was read, not exactly.
            return {
                **super().fingerprint(),
                "distributions_found": len(dists),
                "folders": sorted({str(d.folder.parent) for d in dists}),
                **common,
            }
        # Pinned: the version of each, so a manifest diff names the distribution whose licence moved.
        versions = {normalize_name(d.name): d.version for d in dists} | dict.fromkeys(missing)
        return {**super().fingerprint(), "versions": dict(sorted(versions.items())), **common}


def _dist_info_folder(dist: importlib.metadata.Distribution) -> Path | None:
    # RECORD lists the dist-info folder's own files; that is the public way to find the folder. Searched
    # as text: dist.files builds a path object per line, 10x slower over torch's 20,000-line RECORD.
    match = _RECORD_DIST_INFO.search(dist.read_text("RECORD") or "")
    return Path(str(dist.locate_file(match.group(1)))).resolve() if match else None


def _read_metadata(folder: Path) -> email.message.Message:
    text = _read_text(folder / "METADATA") or ""
    return email.parser.Parser().parsestr(text, headersonly=True)


def dep5_prose(text: str) -> str:
    """The prose of a machine-readable (DEP-5) copyright file: License bodies, Disclaimers, Comments."""
    fields: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line[:1] in (" ", "\t"):
            # Continuation line; a lone "." stands for an empty line.
            if fields:
                fields[-1][1].append("" if line.strip() == "." else line.strip())
        elif not line.strip() or line.startswith("#"):
            if fields:
                fields[-1][1].append("")  # stanza break
        elif ":" in line:
            name, _, value = line.partition(":")
            fields.append((name.strip().lower(), [value.strip()]))
    parts = []
    for name, lines in fields:
        if name not in _PROSE_FIELDS:
            continue
        # A License field's first line is the short name ("GPL-3+"); only its body is prose.
        body = "\n".join(lines[1:] if name == "license" else lines).strip()
        if body:
            parts.append(body)
    return "\n\n".join(parts)


def free_form_prose(text: str) -> str:
    """A free-form copyright file without copyright-holder, address-only and decoration lines."""
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        # Copyright holders, and decoration left from C comments or rulers (" */", "* *", "----").
        if _COPYRIGHT_LINE.match(stripped) or (stripped and not any(c.isalnum() for c in stripped)):
            continue
        addresses = sum(len(match) for match in _ADDRESS.findall(stripped))
        if stripped and addresses * 2 > len(stripped.replace(" ", "")):
            continue
        kept.append(line.rstrip())
    return "\n".join(kept)


class DebianCopyrightSource(Source):
    """Prose of ``/usr/share/doc/*/copyright`` files, deduplicated by paragraph; one document per package."""

    kind: ClassVar[str] = "debian_copyright"
    install_hint: ClassVar[str] = (
        "these files come with Debian packages; on other systems point 'glob' at your own licence files, "
        "or drop source 'debian_copyright' from the card"
    )

    class Params(SourceParams):
        kind: Literal["debian_copyright"] = "debian_copyright"
        glob: str = Field(default="/usr/share/doc/*/copyright", description="Copyright files to read.")
        packages: list[str] | None = Field(
            default=None,
            description="Read only the files of these packages (the folder above each file), each of which must "
            "match 'glob'; default: every match, which differs between machines.",
        )

    params: Params  # narrows the base attribute for type checkers

    def _matches(self) -> tuple[list[Path], list[str]]:
        """(the files to read, sorted; the pinned packages with no file matching the glob)."""
        files = [Path(p) for p in sorted(glob.glob(self.params.glob)) if Path(p).is_file()]
        if self.params.packages is None:
            return files, []
        wanted = set(self.params.packages)
        files = [path for path in files if path.parent.name in wanted]
        found = {path.parent.name for path in files}
        return files, [name for name in dict.fromkeys(self.params.packages) if name not in found]

    def _files(self) -> list[Path]:
        return self._matches()[0]

    def check(self) -> None:
        files, missing = self._matches()
        if missing:
            raise self.unavailable(
                f"pinned package(s) {', '.join(missing)} have no file matching {self.params.glob}",
                hint=f"apt-get install {' '.join(missing)}, or drop them from the 'packages' list of this source "
                "in the card",
            )
        if not files:
            raise self.unavailable(f"no files match {self.params.glob}")

    def _documents(self) -> Iterator[RawDocument]:
        deduper = ParagraphDeduper()
        for path in self._files():
            raw = _read_text(path) or ""
            prose = dep5_prose(raw) if _MACHINE_READABLE.search(raw) else free_form_prose(raw)
            text = deduper.filter(prose)
            if text:
                yield RawDocument(text=text, source=self.kind, ref=path.parent.name)

    def fingerprint(self) -> dict[str, Any]:
        files, missing = self._matches()
        if self.params.packages is None:
            return {**super().fingerprint(), "files": len(files)}
        # Pinned: a hash of each package's file, so a manifest diff names the package whose text changed.
        hashes = {path.parent.name: _short_sha256(path) for path in files} | dict.fromkeys(missing)
        return {**super().fingerprint(), "sha256": dict(sorted(hashes.items()))}


def _short_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None
