"""GCIDE dictionary entries (the ``general`` domain), read from the Debian dict-gcide dictd files.

``gcide.index`` maps each headword to an (offset, length) slice of the uncompressed
``gcide.dict.dz`` (dictzip is gzip-compatible), both numbers written in dictd's base64 digits.
Several headwords share one slice; each slice becomes one document.

The dictd conversion leaves some markup of the original SGML: ``\\Syl*la"bles\\`` after the
headword, ``{cross references}`` in braces, ``[1913 Webster]`` provenance tags and ASCII codes
for accented letters (``['e]``, ``[=a]``, ``[i^]``). These are removed or turned into Unicode.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from moe_experts.sources.base import RawDocument, Source, SourceParams

_DIGITS = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
# Index entries that describe the database itself (URL, licence preamble), not words.
_META_PREFIX = "00-"

_SOURCE_NAMES = (
    r"1913 Webster|Webster 1913 Suppl\.|WordNet (?:1\.[56]|sense [\d+& ]+)|Century Dict\. 1906|PJC\.?|AS|RP|RDH|PC"
)
_PROVENANCE = re.compile(rf"\[\s*\+?\s*(?:{_SOURCE_NAMES})(?:\s*\+?\s*(?:{_SOURCE_NAMES}))*\s*\]")
# Some slices run into the next headword after their last provenance tag ("[1913 Webster] Tergeminal").
_TRAILING_LEAK = re.compile(rf"\n[ \t]*{_PROVENANCE.pattern}[^\n]*\s*\Z")
# The syllabified headword, with a directly following pronunciation in parentheses when it has
# stress marks or letter codes ("(r[u^]n)"); labels such as "(Bot.)" are kept.
_SYLLABLES = re.compile(r"\\[^\\]{0,200}\\(?:[ \t]*\((?=[^)\n]*[\[\"*`?])[^)\n]*\))?")
# Pronunciations of inflected forms inside etymologies: "Abased (ȧ*bāst")"; one word, with marks.
_PRONUNCIATION = re.compile(r"\((?=[^()\s]*(?:\*|[^\W\d_][\"`]))[^()\s]{1,40}\)")
# Run-on derivatives keep their syllable marks inside braces: {Gre*ga"ri*ous*ly}.
_BRACED = re.compile(r"\{([^{}\n]*)\}")
_STRESS = re.compile(r"(?<=[A-Za-z])[*\"`](?=[A-Za-z])")
# Sense numbers ("2. "), sub-senses ("(b) "), notes, synonym lists and quotation sources
# ("--Chaucer.") begin their own line; a wrapped citation's "24." does not.
_SENSE_START = r"(?:\d+\.|\([a-z]\))\s|Note:|Syn\b|--"
_WRAPPED = re.compile(rf"(?<!\n)\n(?!\n|{_SENSE_START})")
# Patterns start with a literal character where possible: Python's re then skips ahead quickly,
# which keeps a full pass over the 40 MB dictionary at a few seconds.
_SPACES = re.compile(r"  +")
_BLANK_LINES = re.compile(r"\n\n\n+")

# Mark before a letter -> combining character: acute, grave, macron, circumflex, dot, tilde, diaeresis, cedilla.
_COMBINING = {
    "'": "\u0301", "`": "\u0300", "=": "\u0304", "^": "\u0302", ".": "\u0307", "~": "\u0303", '"': "\u0308",
    ",": "\u0327",
}
_NAMED = {
    "ae": "æ", "AE": "Æ", "oe": "œ", "imac": "ī", "aum": "ä", "asl": "a", "add": "a", "udd": "u",
    "eth": "ð", "thorn": "þ", "th": "th", "ng": "ng", "yogh": "ȝ", "schwa": "ə", "root": "√", "deg": "°",
    "sect": "§", "pounds": "£", "times": "×", "divby": "÷", "div": "÷", "middot": "·", "para": "¶",
    "dagger": "†", "dag": "†", "nbsp": " ", "ldqo": "“", "rdqo": "”", "rsquo": "’", "rarr": "→",
    "flat": "♭", "sharp": "♯", "cacute": "ć", "ccaron": "č", "dsdot": "ḍ", "lsdot": "ḷ", "tsdo": "ṭ",
    "zdot": "ż", "mdot": "ṁ", "alpha": "α", "beta": "β", "gamma": "γ", "Gamma": "Γ", "delta": "δ",
    "Delta": "Δ", "eta": "η", "theta": "θ", "Theta": "Θ", "iota": "ι", "kappa": "κ", "lambda": "λ",
    "Lambda": "Λ", "mu": "μ", "nu": "ν", "xi": "ξ", "pi": "π", "Pi": "Π", "rho": "ρ", "sigma": "σ",
    "Sigma": "Σ", "tau": "τ", "phi": "φ", "chi": "χ", "Omega": "Ω",
}
# "[-o]" and "[*a]" are dictionary-specific marks with no Unicode equivalent; the letter stays.
_LETTER_CODE = re.compile(r"\[(?:([-'`=^.~\",*])([A-Za-z]{1,2})|([A-Za-z]{1,2})\^|(" + "|".join(_NAMED) + r"))\]")


def decode_number(digits: str) -> int:
    """A number written in dictd's base64 digits ("Kj" -> 675)."""
    value = 0
    for char in digits:
        value = value * 64 + _DIGITS[char]
    return value


def _letter(match: re.Match[str]) -> str:
    mark, letters, breve, named = match.groups()
    if named:
        return _NAMED[named]
    if breve:  # a trailing ^ is the breve of a short vowel: [i^] -> ĭ
        return unicodedata.normalize("NFC", breve[0] + "\u0306" + breve[1:])
    combining = _COMBINING.get(mark, "")
    return unicodedata.normalize("NFC", letters[0] + combining + letters[1:])


def _reflow(text: str) -> str:
    """Join hard-wrapped lines; keep a line break before each sense, note or quotation source."""
    text = _SPACES.sub(" ", text.replace("\t", " "))
    # Removed pronunciations leave "Run , v. i."; close those gaps.
    text = text.replace(" \n", "\n").replace("\n ", "\n").replace(" ,", ",").replace(" ;", ";")
    text = _BLANK_LINES.sub("\n\n", text.strip())
    return _WRAPPED.sub(" ", text)


def clean_entry(raw: str) -> str:
    """Readable text of one dictionary slice."""
    text = _TRAILING_LEAK.sub("", raw)
    text = _PROVENANCE.sub("", text)
    text = _SYLLABLES.sub("", text)
    text = _LETTER_CODE.sub(_letter, text)
    text = _PRONUNCIATION.sub("", text)
    text = _BRACED.sub(lambda match: _STRESS.sub("", match.group(1)), text)
    text = text.replace("{", "").replace("}", "")
    return _reflow(text)


class GcideSource(Source):
    """One document per GCIDE dictionary entry, in file order."""

    kind: ClassVar[str] = "gcide"
    install_hint: ClassVar[str] = (
        "apt-get install dict-gcide (Debian/Ubuntu), or point 'path' at a folder with gcide.index and "
        "gcide.dict.dz, or drop source 'gcide' from the card"
    )

    class Params(SourceParams):
        kind: Literal["gcide"] = "gcide"
        path: Path = Field(default=Path("/usr/share/dictd"), description="Folder with gcide.index and gcide.dict.dz.")

    params: Params  # narrows the base attribute for type checkers

    def _index(self) -> Path:
        return self.params.path.expanduser() / "gcide.index"

    def _dict(self) -> Path:
        return self.params.path.expanduser() / "gcide.dict.dz"

    def check(self) -> None:
        for path in (self._index(), self._dict()):
            if not path.is_file():
                raise self.unavailable(f"no {path.name} at {path}")

    def _entries(self) -> list[tuple[int, int, list[str]]]:
        """(offset, length, headwords) of every word slice, in offset order."""
        slices: dict[tuple[int, int], list[str]] = {}
        meta: set[tuple[int, int]] = set()
        with self._index().open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 3:
                    continue
                headword, span = fields[0], (decode_number(fields[1]), decode_number(fields[2]))
                # "00-database-info" also appears as "9:00-database-info"; both point at the preamble.
                if headword.split(":", 1)[-1].startswith(_META_PREFIX):
                    meta.add(span)
                else:
                    slices.setdefault(span, []).append(headword)
        return sorted((span[0], span[1], words) for span, words in slices.items() if span not in meta)

    def _documents(self) -> Iterator[RawDocument]:
        entries = self._entries()
        # The whole file is ~40 MB uncompressed; one read is much faster than seeking per entry.
        with gzip.open(self._dict()) as handle:
            data = handle.read()
        for offset, length, headwords in entries:
            chunk = data[offset : offset + length]
            try:
                raw = chunk.decode("utf-8")
            except UnicodeDecodeError:
                raw = chunk.decode("cp1252", errors="replace")  # a few quotations were pasted from Windows
            # The index lists a slice under every phrase it defines ("As things run", "Run", "To run
            # down"); the reference is the one the entry starts with.
            by_length = sorted(headwords, key=len, reverse=True)
            headword = next((word for word in by_length if raw.lstrip().startswith(word)), headwords[0])
            if not raw.lstrip().startswith(headword):
                # The first word slice also holds the tail of the licence preamble; start at its headword.
                start = raw.find(f"\n{headword} \\")
                raw = raw[start + 1 :] if start >= 0 else raw
            text = clean_entry(raw)
            if text:
                yield RawDocument(text=text, source=self.kind, ref=headword)

    def _database_short(self) -> str | None:
        """The database's own one-line description, which carries its version ("... v.0.48")."""
        if not (self._index().is_file() and self._dict().is_file()):
            return None
        with self._index().open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.rstrip("\n").split("\t")
                if len(fields) == 3 and fields[0] == "00-database-short":
                    offset, length = decode_number(fields[1]), decode_number(fields[2])
                    with gzip.open(self._dict()) as data:
                        data.seek(offset)
                        text = data.read(length).decode("utf-8", errors="replace")
                    return " ".join(text.split()).removeprefix("00-database-short").strip()
        return None

    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "resolved_path": str(self.params.path.expanduser().resolve()),
            "data_version": self._database_short(),
        }
