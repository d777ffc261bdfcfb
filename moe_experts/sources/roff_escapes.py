"""Roff's input layer: escapes (fonts, named characters, accents, strings), macro arguments, logical
lines (comments dropped, escaped newlines joined) and the conditions of .if/.ie, as nroff reads them.

Used by ``roff`` (the man macros, tbl) and ``roff_mdoc`` (the mdoc macros); imports nothing from the
package.
"""

from __future__ import annotations

import re
import unicodedata

# Named characters (\(xx, \[xx], \C'xx') worth keeping; any other is dropped.
_GLYPHS = {
    "aq": "'", "dq": '"', "em": "—", "en": "–", "hy": "-", "mi": "-", "-": "-", "bu": "•", "lq": "“", "rq": "”",
    "oq": "‘", "cq": "’", "co": "©", "rg": "®", "tm": "™", "de": "°", "ti": "~", "ha": "^", "ga": "`", "aa": "'",
    "sl": "/", "rs": "\\", "ul": "_", "ru": "_", "ba": "|", "br": "|", "or": "|", "pl": "+", "eq": "=", "mu": "×",
    "di": "÷", "+-": "±", "<=": "≤", ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "ua": "↑", "da": "↓", "fm": "′",
    "sc": "§", "ps": "¶", "Eu": "€", "Po": "£", "12": "½", "14": "¼", "34": "¾", "ss": "ß", "at": "@", "sh": "#",
    "Do": "$", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩", "Fo": "«", "Fc": "»", "fo": "‹",
    "fc": "›", "dg": "†", "ci": "○", "sq": "□", "**": "*", "if": "∞", "*m": "µ", "*p": "π",
}
# \(:a, \('e, \(`e, \(^o, \(~n, \(,c: a letter with an accent.
_ACCENTS = {":": "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", ",": "\u0327"}
# Strings (\*x, \*(xx, \*[xx]): groff's own and the ones pod2man and DocBook define; others are dropped.
_STRINGS = {
    "Aq": "'", "lq": "“", "rq": "”", 'L"': '"', 'R"': '"', "C`": '"', "C'": '"', "--": "--", "PI": "pi",
    "Tm": "(TM)", "R": "®", "Ba": "|", "Le": "≤", "Ge": "≥", "Lt": "<", "Gt": ">", "Pm": "±", "Ne": "≠",
    "Lq": "“", "Rq": "”", "q": '"', "Am": "&",
}
# One-character escapes: \e is a backslash, \- a minus, "\ " a space; the rest are zero-width.
_ONE = {"e": "\\", "E": "\\", "\\": "\\", "-": "-", " ": " ", "~": " ", "0": " ", "t": "\t", "'": "'", "`": "`",
        ".": ".", "_": "_"}
_ZERO_WIDTH = frozenset("&/,:%|^)acdprujz{}!?#\"")
_ESCAPE = re.compile(
    r"""\\(?:
        [fF](?:\[[^\]]*\]|\(..|.)                            # font
      | s[+-]?(?:\(\d\d|\[[^\]]*\]|\d)                       # point size
      | (?P<delim>[hvwlLoDbXSRxZNCAB])'(?P<arg>[^']*)'       # motions, widths, glyph by name (C)
      | [nkgmMYV$][+-]?(?:\(..|\[[^\]]*\]|.)                 # registers, marks, colours, macro arguments
      | \*(?:\((?P<str2>..)|\[(?P<strl>[^\]]*)\]|(?P<str1>.))  # strings
      | \((?P<chr2>..)                                      # named character, two letters
      | \[(?P<chrl>[^\]]*)\]                                 # named character, any length
      | (?P<one>.)
    )""",
    re.VERBOSE | re.DOTALL,
)
_COMMENT = re.compile(r'((?:[^\\]|\\[^"#])*)\\["#]')
_ARG = re.compile(r'"((?:[^"]|"")*)(?:"|$)|((?:\\.|[^\s\\])+)')


def _glyph(name: str) -> str:
    if name in _GLYPHS:
        return _GLYPHS[name]
    if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    if name[:1] == "u" and re.fullmatch(r"u[0-9A-F]{4,6}(?:_[0-9A-F]{4,6})*", name):
        return unicodedata.normalize("NFC", "".join(chr(int(code, 16)) for code in name[1:].split("_")))
    return ""


def _escape(match: re.Match[str]) -> str:
    one = match.group("one")
    if one is not None:
        return _ONE.get(one, "" if one in _ZERO_WIDTH else one)
    name = match.group("chr2") if match.group("chr2") is not None else match.group("chrl")
    if name is not None:
        return _glyph(name)
    if match.group("delim") == "C":
        return _glyph(match.group("arg"))
    if match.group("delim") == "h":  # a move to the right reads as a space (DocBook's bullet lists)
        return "" if match.group("arg").startswith("-") else " "
    string = match.group("str2") or match.group("strl") or match.group("str1")
    return _STRINGS.get(string, "") if string else ""


def _inline(text: str) -> str:
    """Roff text with its escapes resolved: fonts dropped, named characters and strings kept where known."""
    return _ESCAPE.sub(_escape, text) if "\\" in text else text


def _args(text: str) -> list[str]:
    """Macro arguments: split at spaces, "double quoted" ones kept whole ("" inside is one quote)."""
    return [m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2) for m in _ARG.finditer(text)]


def _logical_lines(source: str) -> list[str]:
    """Input lines without comments, with escaped newlines joined (except after ``\\{``, which opens a block)."""
    out: list[str] = []
    pending = ""
    for raw in source.replace("\r\n", "\n").split("\n"):
        line = raw
        if "\\" in raw and ('\\"' in raw or "\\#" in raw):
            match = _COMMENT.match(raw)
            line = match.group(1) if match else raw
            if not line.strip() and not pending:
                continue  # a whole-line comment is no input line at all, not a blank one
        line = pending + line
        pending = ""
        if (len(line) - len(line.rstrip("\\"))) % 2:
            if not line.endswith("\\{\\"):
                pending = line[:-1]
                continue
            line = line[:-1]
        out.append(line)
    if pending:
        out.append(pending)
    return out


def _condition(rest: str) -> tuple[bool, str]:
    """(whether an .if/.ie condition holds when formatting for a terminal, the rest of the line)."""
    rest = rest.lstrip()
    negate = rest.startswith("!")
    rest = rest[negate:]
    if rest[:1] in ("'", '"'):  # a string comparison 'a'b': taken as false
        end = rest.find(rest[0], rest.find(rest[0], 1) + 1)
        return negate, rest[end + 1 :] if end > 0 else ""
    token, body = ([*rest.split(None, 1), ""])[:2]
    return (token == "n") != negate, body  # n: nroff (a terminal), t: troff; registers and the rest: false
