"""Text operations behind the routing suites (``suites.py``): cut, splice, stuff, and synthesise.

Every function that chooses takes the caller's ``random.Random``, so a suite is
reproducible from its seed; none reads files.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping

from moe_experts.data.clean import chunk

# Where a host document may be opened, best first: a paragraph break, a line break, a sentence end.
_BOUNDARIES = (re.compile(r"\n[ \t]*\n\s*"), re.compile(r"\n"), re.compile(r"(?<=[.!?;])[ \t]+(?=\S)"))
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)")
_WORD = re.compile(r"[^\W\d_]+")  # letter runs in any script
_KEYWORD = re.compile(r"[A-Za-z]+")
MAX_KEYWORD_CHARS = 24  # longer letter runs are identifiers or noise, not words
MIN_LOG_ODDS = math.log(2)  # a keyword is at least twice as frequent (smoothed) in its domain as in any other

# Synthetic text (the out-of-domain suite) is built from these alphabets; no corpus owns it.
_GREEK = "αβγδεζηθικλμνξοπρστυφχψω"
_CYRILLIC = "абвгдежзийклмнопрстуфхцчшщэюя"
SCRIPTS = ("Greek", "Cyrillic", "CJK")


def trim(text: str, max_chars: int) -> str:
    """The first piece of ``text`` of at most ``max_chars``, cut at a paragraph, line or space."""
    return chunk(text.strip("\n"), max_chars)[0][:max_chars] if len(text) > max_chars else text


# --------------------------------------------------------------------------- mixed


def passage(text: str, rng: random.Random, *, min_chars: int, max_chars: int, max_units: int) -> str | None:
    """A run of consecutive lines (sentences when ``text`` has fewer than 3 lines) within the bounds, or None."""
    lines = text.strip("\n").split("\n")
    if sum(bool(line.strip()) for line in lines) >= 3:
        units, sep = lines, "\n"
    else:
        units, sep = _SENTENCE.split(text.strip()), " "
    for first in (rng.randrange(len(units)), 0):  # a random start, else the beginning
        while first < len(units) and not units[first].strip():
            first += 1
        if first == len(units):
            continue
        picked: list[str] = []
        for unit in units[first:]:
            if len(picked) == max_units or len(sep.join([*picked, unit])) > max_chars:
                break
            picked.append(unit)
        # A first unit over the limit (a long sentence or line): its first words.
        out = sep.join(picked).rstrip() if picked else trim(units[first].strip(), max_chars)
        if len(out.strip()) >= min_chars:
            return out
    return None


def split_point(text: str, rng: random.Random) -> tuple[int, int] | None:
    """Where to open a host in its middle 20-80%: (end of the part before, start of the part after)."""
    lo, hi = 0.2 * len(text), 0.8 * len(text)
    for pattern in _BOUNDARIES:
        spans = [(m.start(), m.end()) for m in pattern.finditer(text) if m.start() >= lo and m.end() <= hi]
        if spans:
            return rng.choice(spans)
    return None


def splice(host: str, cut: tuple[int, int], inserted: str) -> str:
    """``inserted`` as its own paragraph at ``cut`` of ``host``."""
    return f"{host[: cut[0]]}\n\n{inserted}\n\n{host[cut[1]:]}"


# --------------------------------------------------------------------------- out of domain


def word_pool(texts: Iterable[str], cap: int = 5000) -> list[str]:
    """The words of ``texts`` in order, up to about ``cap``."""
    words: list[str] = []
    for text in texts:
        words.extend(_WORD.findall(text))
        if len(words) >= cap:
            break
    return words or ["text"]


def word_run(pool: list[str], n: int, rng: random.Random) -> list[str]:
    """``n`` consecutive words of the pool from a random start, wrapping around."""
    start = rng.randrange(len(pool))
    return [pool[(start + k) % len(pool)] for k in range(n)]


def shuffle_letters(word: str, rng: random.Random) -> str:
    letters = list(word)
    rng.shuffle(letters)
    shuffled = "".join(letters)
    # A shuffle that gives the word back would leave a real word in the gibberish.
    return shuffled[1:] + shuffled[0] if shuffled == word and len(set(word)) > 1 else shuffled


def sentences(words: list[str], rng: random.Random) -> str:
    """Words grouped into capitalised sentences of 5-14 words."""
    out, k = [], 0
    while k < len(words):
        n = rng.randint(5, 14)
        sentence = " ".join(words[k : k + n])
        out.append(sentence[:1].upper() + sentence[1:] + ".")
        k += n
    return " ".join(out)


def number_table(n_cells: int, rng: random.Random) -> tuple[str, str]:
    """Rows of random numbers, a format per column; (text, description)."""
    cols = rng.randint(3, 7)
    rows = max(2, n_cells // cols)
    sep = rng.choice(["  ", " | ", ",", "\t"])
    formats = [rng.choice(["int", "decimal", "hex", "signed"]) for _ in range(cols)]

    def cell(fmt: str) -> str:
        if fmt == "int":
            return str(rng.randint(0, 99_999))
        if fmt == "decimal":
            return f"{rng.uniform(0, 1000):.{rng.randint(1, 4)}f}"
        if fmt == "hex":
            return f"0x{rng.getrandbits(32):08x}"
        return f"{rng.gauss(0, 50):+.3f}"

    text = "\n".join(sep.join(cell(f) for f in formats) for _ in range(rows))
    return text, f"table of random numbers ({rows} rows x {cols} columns: {', '.join(formats)})"


def foreign_script(script: str, lengths: list[int], rng: random.Random) -> str:
    """Random letters of ``script`` (one of ``SCRIPTS``) in words of the given lengths."""
    if script == "CJK":
        # No spaces between words, as in Chinese and Japanese; a character stands for about 3 Latin letters.
        words = ["".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(max(1, n // 3))) for n in lengths]
        out, k = [], 0
        while k < len(words):
            n = rng.randint(5, 14)
            out.append("".join(words[k : k + n]) + "。")
            k += n
        return "".join(out)
    alphabet = _GREEK if script == "Greek" else _CYRILLIC
    return sentences(["".join(rng.choice(alphabet) for _ in range(n)) for n in lengths], rng)


# --------------------------------------------------------------------------- adversarial


def keyword_counts(texts: Iterable[str], min_length: int) -> Counter[str]:
    """Lower-cased ASCII letter runs of ``min_length`` to ``MAX_KEYWORD_CHARS`` letters."""
    counter: Counter[str] = Counter()
    for text in texts:
        words = (m.lower() for m in _KEYWORD.findall(text))
        counter.update(w for w in words if min_length <= len(w) <= MAX_KEYWORD_CHARS)
    return counter


def distinctive_words(counts: Mapping[str, Counter[str]], *, top: int, min_count: int) -> dict[str, list[str]]:
    """Per group, its ``top`` words by add-one smoothed log-odds against every other group, best first.

    A word's score is its smallest log-odds against any single other group, so a
    keyword is rarer in each other group (the fallback's included), not only in
    their sum; words under ``MIN_LOG_ODDS`` or seen fewer than ``min_count``
    times in the group are left out. Ties go to the alphabetically first word.
    """
    vocab = len(set().union(*counts.values())) if counts else 0
    totals = {g: sum(c.values()) for g, c in counts.items()}

    def log_rate(group: str, word: str) -> float:
        return math.log((counts[group][word] + 1) / (totals[group] + vocab))

    out: dict[str, list[str]] = {}
    for group, counter in counts.items():
        others = [g for g in counts if g != group]
        scored = []
        for word, c in counter.items():
            if c < min_count:
                continue
            score = min((log_rate(group, word) - log_rate(g, word) for g in others), default=math.inf)
            if score >= MIN_LOG_ODDS:
                scored.append((-score, word))
        out[group] = [w for _, w in sorted(scored)[:top]]
    return out


def stuff(text: str, keywords: list[str], rng: random.Random) -> str:
    """Insert each keyword before a distinct random word of ``text`` (or after the last), keeping its layout."""
    parts = re.split(r"(\s+)", text)  # words at even indices, whitespace at odd ones
    n_words = (len(parts) + 1) // 2
    slots = sorted(rng.sample(range(n_words + 1), len(keywords)), reverse=True)
    for slot, word in zip(slots, keywords, strict=True):
        if slot == n_words:
            parts[-1] = f"{parts[-1]} {word}"
        else:
            parts[2 * slot] = f"{word} {parts[2 * slot]}"
    return "".join(parts)
