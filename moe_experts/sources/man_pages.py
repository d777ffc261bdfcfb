"""Unix manual pages (the ``unix`` domain): roff sources under ``/usr/share/man``, converted to plain text.

Pages are read from the top-level English folders ``man<section>`` only (``de/``, ``fr/`` and the other
locale folders hold translations). The conversion (``moe_experts.sources.roff``) is a small pure-Python
reading of the ``man`` macros (and the common ``mdoc`` ones, which OpenSSH and tmux use), not groff: it
must take milliseconds per page for thousands of pages, and it only has to keep the words, headings and
option lists.
"""

from __future__ import annotations

import bz2
import datetime
import fnmatch
import gzip
import hashlib
import logging
import lzma
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

from pydantic import Field, field_validator

from moe_experts.sources.base import RawDocument, Source, SourceParams
from moe_experts.sources.roff import roff_to_text

log = logging.getLogger(__name__)

_OPENERS: dict[str, Callable[[Path], IO[bytes]]] = {
    ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".lzma": lzma.open,  # type: ignore[dict-item]
}
_SECTION = re.compile(r"^(?:[0-9][0-9a-z]*|[nlo])$")


def page_name(file_name: str, section: str) -> str | None:
    """``ls`` for ``ls.1.gz`` in section 1 (``CA.pl`` for ``CA.pl.1ssl.gz``); None for files that are not pages."""
    stem, ext = os.path.splitext(file_name)
    if ext not in _OPENERS:
        stem = file_name
    name, dot, suffix = stem.rpartition(".")
    return name if dot and name and suffix.startswith(section) else None


@dataclass(frozen=True)
class _Page:
    ref: str  # relative to the man folder, e.g. "man1/ls.1.gz"
    path: Path
    name: str
    mtime: float


def read_page(path: Path) -> str:
    """The roff source of one page file, decompressed by its suffix, decoded as UTF-8 (bad bytes replaced)."""
    opener = _OPENERS.get(path.suffix)
    if opener is None:
        data = path.read_bytes()
    else:
        with opener(path) as handle:
            data = handle.read()
    return data.decode("utf-8", errors="replace")


class ManPagesSource(Source):
    """One document per manual page: the title line, then each section heading followed by its text."""

    kind: ClassVar[str] = "man_pages"
    install_hint: ClassVar[str] = (
        "apt-get install man-db plus the packages whose pages you want (Debian/Ubuntu); slim images drop "
        "/usr/share/man through a dpkg path-exclude in /etc/dpkg/dpkg.cfg.d/ (remove it, then reinstall the "
        "packages); or point 'path' at a folder with man1/, man5/, ... folders, or drop source 'man_pages' "
        "from the card"
    )

    class Params(SourceParams):
        kind: Literal["man_pages"] = "man_pages"
        path: Path = Field(
            default=Path("/usr/share/man"), description="Folder holding man1/, man5/, ... (locale folders ignored)."
        )
        sections: tuple[str, ...] = Field(
            default=("1", "5", "8"),
            min_length=1,
            description="Sections to read, as numbers or strings (1, \"5\"): the folders man<section>.",
        )
        pages: list[str] | None = Field(
            default=None,
            description="Read only these pages (names such as ls, ssh_config; every section among 'sections' "
            "that has one), each of which must be installed; default: every page found, which differs "
            "between machines.",
        )
        exclude: list[str] | None = Field(
            default=None,
            description="Skip pages whose names match these shell patterns (gcloud*: one program's thousands "
            "of generated pages); applied after 'pages'.",
        )

        @field_validator("sections", mode="before")
        @classmethod
        def _sections_as_strings(cls, value: Any) -> Any:
            if isinstance(value, (list, tuple)):
                return tuple(str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
            return value

        @field_validator("sections")
        @classmethod
        def _known_sections(cls, value: tuple[str, ...]) -> tuple[str, ...]:
            bad = [s for s in value if not _SECTION.match(s)]
            if bad:
                raise ValueError(f"not a manual section: {', '.join(bad)} (use numbers such as 1, 5, 8)")
            return tuple(dict.fromkeys(value))

    params: Params  # narrows the base attribute for type checkers

    def _found(self) -> tuple[list[_Page], list[str]]:
        """(the pages to read, sorted by ref, one per resolved file; the pinned names not found)."""
        root = self.params.path.expanduser()
        wanted = set(self.params.pages) if self.params.pages is not None else None
        excluded = [re.compile(fnmatch.translate(p)) for p in self.params.exclude or ()]
        candidates: list[tuple[bool, _Page, str]] = []  # (is a symlink, page, resolved path)
        for section in self.params.sections:
            folder = root / f"man{section}"
            if not folder.is_dir():
                continue
            real_folder = os.path.realpath(folder)
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = page_name(entry.name, section)
                    if name is None or (wanted is not None and name not in wanted):
                        continue
                    try:
                        if not entry.is_file():  # follows links: a dangling link is not a page
                            continue
                        mtime = entry.stat().st_mtime
                    except OSError:
                        continue
                    link = entry.is_symlink()
                    resolved = os.path.realpath(entry.path) if link else os.path.join(real_folder, entry.name)
                    page = _Page(f"man{section}/{entry.name}", Path(entry.path), name, mtime)
                    candidates.append((link, page, resolved))
        # A link is read only when its target is not itself among the pages (then under the link's name).
        chosen: dict[str, _Page] = {}
        for _, page, resolved in sorted(candidates, key=lambda c: (c[0], c[1].ref)):
            chosen.setdefault(resolved, page)
        # Excluded after that, so that a link to an excluded page does not bring it back.
        pages = sorted((p for p in chosen.values() if not any(x.match(p.name) for x in excluded)), key=lambda p: p.ref)
        missing: list[str] = []
        if self.params.pages is not None:
            found = {p.name for _, p, _ in candidates}
            missing = [name for name in dict.fromkeys(self.params.pages) if name not in found]
        return pages, missing

    def _folders(self) -> str:
        return ", ".join(str(self.params.path / f"man{s}") for s in self.params.sections)

    def check(self) -> None:
        if not self.params.path.expanduser().is_dir():
            raise self.unavailable(f"no folder at {self.params.path}")
        pages, missing = self._found()
        if missing:
            raise self.unavailable(
                f"pinned page(s) {', '.join(missing)} not found in {self._folders()}",
                hint=f"install the packages that ship them ('dpkg -S /man1/{missing[0]}.' names the package on a "
                "machine that has the page), or drop them from the 'pages' list of this source in the card",
            )
        if not pages:
            raise self.unavailable(f"no manual pages in {self._folders()}")

    def _documents(self) -> Iterator[RawDocument]:
        for page in self._found()[0]:
            try:
                source = read_page(page.path)
            except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
                log.warning("man_pages: skipping %s: %s", page.ref, exc)
                continue
            text = roff_to_text(source)
            if text:  # a redirect page (".so man1/other.1", which man(1) follows) converts to nothing
                yield RawDocument(text=text, source=self.kind, ref=page.ref)

    def fingerprint(self) -> dict[str, Any]:
        pages, missing = self._found()
        common = {**super().fingerprint(), "resolved_path": str(self.params.path.expanduser().resolve())}
        if self.params.pages is None:
            # Whatever is installed: the count and the newest file say cheaply whether anything changed.
            newest = max((p.mtime for p in pages), default=None)
            stamp = None if newest is None else datetime.datetime.fromtimestamp(newest, datetime.UTC)
            return {
                **common,
                "pages_found": len(pages),
                "newest_mtime": stamp.isoformat(timespec="seconds") if stamp else None,
            }
        # Pinned: a hash of each file, so a manifest diff names the page whose text changed.
        hashes: dict[str, str | None] = {p.ref: _short_sha256(p.path) for p in pages}
        return {**common, "sha256": dict(sorted(hashes.items())), "missing": missing}


def _short_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None
