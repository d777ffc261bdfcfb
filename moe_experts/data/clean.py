"""Text cleaning, quality filtering and chunking of raw source documents."""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MANY_BLANKS = re.compile(r"\n{3,}")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")

# A document whose longest line is longer than this is a data table or minified
# blob (stdlib codec tables, base64 payloads), not language.
MAX_LINE_CHARS = 1000
# Below this share of letters a "document" is mostly digits, hex or punctuation.
MIN_LETTER_RATIO = 0.3


def normalize(text: str) -> str:
    """NFC, Unix newlines, no control characters, no trailing spaces, at most one blank line in a row.

    Indentation is kept: it is meaning in code.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _MANY_BLANKS.sub("\n\n", text).strip("\n").rstrip()


def dedup_key(text: str) -> str:
    """The text as exact-duplicate detection sees it: case and whitespace folded."""
    return " ".join(text.lower().split())


def is_language(text: str) -> bool:
    """Cheap quality filter: enough letters, no absurdly long lines."""
    if not text:
        return False
    letters = sum(ch.isalpha() for ch in text)
    if letters / len(text) < MIN_LETTER_RATIO:
        return False
    return max(len(line) for line in text.split("\n")) <= MAX_LINE_CHARS


def chunk(text: str, max_chars: int) -> list[str]:
    """Cut a document into pieces of at most ``max_chars``, at paragraph breaks where possible.

    Paragraphs are packed greedily; a paragraph longer than the limit is cut at
    line breaks, and a line longer than the limit at spaces (or hard, as a last resort).
    """
    if len(text) <= max_chars:
        return [text]
    # (piece, separator that joins it to the previous piece)
    pieces: list[tuple[str, str]] = []
    for para in _PARAGRAPH_BREAK.split(text):
        if len(para) <= max_chars:
            pieces.append((para, "\n\n"))
            continue
        for i, line in enumerate(para.split("\n")):
            for j, part in enumerate(_cut_line(line, max_chars)):
                pieces.append((part, "\n\n" if i == j == 0 else ("\n" if j == 0 else " ")))
    chunks: list[str] = []
    current = ""
    for piece, sep in pieces:
        candidate = f"{current}{sep}{piece}" if current else piece
        if len(candidate) <= max_chars:
            current = candidate
        else:
            if current:
                chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return [c.strip("\n") for c in chunks if c.strip()]


def _cut_line(line: str, max_chars: int) -> list[str]:
    out = []
    while len(line) > max_chars:
        cut = line.rfind(" ", 0, max_chars)
        if cut <= 0:
            cut = max_chars
        out.append(line[:cut])
        line = line[cut:].lstrip(" ")
    out.append(line)
    return out


def clean(text: str, *, min_chars: int, max_chars: int) -> list[str]:
    """Normalise, chunk and filter one raw document; returns the kept chunks."""
    text = normalize(text)
    return [c for c in chunk(text, max_chars) if len(c) >= min_chars and is_language(c)]
