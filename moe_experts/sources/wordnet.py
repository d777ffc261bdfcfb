"""WordNet synsets (the ``general`` domain), read from the Debian wordnet-base data files.

The format is documented in ``man 5 wndb``. A data line is::

    offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id...] p_cnt [ptr...] [frames...] | gloss

Only the words and the gloss are kept; pointers and verb frames are structure, not text.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from moe_experts.sources.base import RawDocument, Source, SourceParams

# File name -> the part of speech written into each entry, in the order the files are read.
DATA_FILES = {"data.noun": "noun", "data.verb": "verb", "data.adj": "adjective", "data.adv": "adverb"}
# Syntactic markers on adjectives: attributive (a), predicative (p), immediately postnominal (ip).
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
# Glosses quote with `word' (TeX style); plain quotes read better.
_TEX_QUOTE = re.compile(r"`([^`'\n]*)'")
_VERSION = re.compile(r"WordNet (\d+(?:\.\d+)*)")


def parse_data_line(line: str, pos: str) -> tuple[str, str, str] | None:
    """(synset offset, lex_filenum, entry text) of one data line, or None for header lines."""
    if line.startswith("  ") or not line.strip():
        return None  # the licence header: every line starts with two spaces and its line number
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, lex_filenum, word_count = fields[0], fields[1], int(fields[3], 16)
    words: list[str] = []
    for raw in fields[4 : 4 + 2 * word_count : 2]:
        word = _ADJ_MARKER.sub("", raw).replace("_", " ")
        if word.lower() not in (w.lower() for w in words):
            words.append(word)
    gloss = _TEX_QUOTE.sub(r"'\1'", gloss.strip())
    entry = f"{', '.join(words)} ({pos})"
    return offset, lex_filenum, f"{entry}: {gloss}" if gloss else entry


class WordNetSource(Source):
    """Synsets as "word, word (pos): gloss" lines, grouped by lexicographer file into short documents."""

    kind: ClassVar[str] = "wordnet"
    install_hint: ClassVar[str] = (
        "apt-get install wordnet-base (Debian/Ubuntu), or point 'path' at a WordNet dict folder, "
        "or drop source 'wordnet' from the card"
    )

    class Params(SourceParams):
        kind: Literal["wordnet"] = "wordnet"
        path: Path = Field(default=Path("/usr/share/wordnet"), description="Folder with data.noun, data.verb, ...")
        max_chars_per_doc: int = Field(default=800, ge=1, description="Group entries up to this many characters.")

    params: Params  # narrows the base attribute for type checkers

    def _files(self) -> list[tuple[Path, str]]:
        root = self.params.path.expanduser()
        return [(root / name, pos) for name, pos in DATA_FILES.items() if (root / name).is_file()]

    def check(self) -> None:
        if not self._files():
            names = ", ".join(DATA_FILES)
            raise self.unavailable(f"none of {names} found in {self.params.path}")

    def _documents(self) -> Iterator[RawDocument]:
        for path, pos in self._files():
            yield from self._file_documents(path, pos)

    def _file_documents(self, path: Path, pos: str) -> Iterator[RawDocument]:
        limit = self.params.max_chars_per_doc
        entries: list[str] = []
        size, first_offset, group = 0, "", None
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                parsed = parse_data_line(line.rstrip("\n"), pos)
                if parsed is None:
                    continue
                offset, lex_filenum, entry = parsed
                # A new lexicographer file (noun.animal -> noun.artifact) starts a new topic.
                if entries and (lex_filenum != group or size + 1 + len(entry) > limit):
                    yield RawDocument(text="\n".join(entries), source=self.kind, ref=f"{path.name}:{first_offset}")
                    entries, size = [], 0
                if not entries:
                    first_offset, group = offset, lex_filenum
                    size = len(entry)
                else:
                    size += 1 + len(entry)
                entries.append(entry)
        if entries:
            yield RawDocument(text="\n".join(entries), source=self.kind, ref=f"{path.name}:{first_offset}")

    def fingerprint(self) -> dict[str, Any]:
        version = None
        files = self._files()
        if files:
            with files[0][0].open(encoding="utf-8", errors="replace") as handle:
                for line in itertools.islice(handle, 40):  # the version is in the licence header
                    match = _VERSION.search(line)
                    if match:
                        version = match.group(1)
                        break
        return {
            **super().fingerprint(),
            "resolved_path": str(self.params.path.expanduser().resolve()),
            "files": [path.name for path, _ in files],
            "wordnet_version": version,
        }
