"""Roff to plain text: a manual page's ``man`` or ``mdoc`` source as a reader sees it in a terminal.

Kept: the words, headings (.TH, .SH/.SS, .Dt, .Sh/.Ss), item tags and bodies (.TP, .IP, .It), option
lists, tbl tables (one line per row, cells two spaces apart), no-fill displays, link targets, and the
named characters, accents and strings worth keeping. Dropped: fonts, point sizes, motions, registers,
comments, macro and string definitions (.de, .ds, ...), redirects (.so), the troff branch of conditionals
(the page is formatted as by nroff), unknown glyphs and strings, and every request that only changes
layout. Pure Python, about a millisecond a page, not groff.
"""

from __future__ import annotations

import re
import textwrap
import unicodedata
from typing import Any

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
_REQUEST = re.compile(r"[ \t]*([^\s\\]*)[ \t]*(.*)")
_ARG = re.compile(r'"((?:[^"]|"")*)(?:"|$)|((?:\\.|[^\s\\])+)')
_TABLE_TAB = re.compile(r"tab\s*\((.)\)")
_BULLET = re.compile(r"^(?:[•*·o\-–—]|\(?[0-9a-zA-Z]{1,2}[.)])$")
_ALTERNATING = frozenset({"BR", "BI", "IR", "RB", "RI", "IB"})
_FONTS = frozenset({"B", "I", "SM", "SB"})
_LONGEST_LINE = 900
_SKIP_BLOCK = frozenset({"de", "de1", "dei", "am", "am1", "ami", "ig"})

# mdoc: pairs that enclose the rest of the line, open/close halves, and names that print a word.
_MDOC_PAIRS = {"Op": "[]", "Pq": "()", "Bq": "[]", "Brq": "{}", "Aq": "<>", "Dq": "“”", "Qq": '""', "Sq": "‘’",
               "Ql": "‘’"}
_MDOC_OPEN = {"Oo": "[", "Po": "(", "Bo": "[", "Bro": "{", "Ao": "<", "Do": "“", "Qo": '"', "So": "‘"}
_MDOC_CLOSE = {"Oc": "]", "Pc": ")", "Bc": "]", "Brc": "}", "Ac": ">", "Dc": "”", "Qc": '"', "Sc": "’"}
_MDOC_WORDS = {"Ux": "UNIX", "Bx": "BSD", "Ox": "OpenBSD", "Fx": "FreeBSD", "Nx": "NetBSD", "Bsx": "BSD/OS",
               "Dx": "DragonFly", "At": "AT&T UNIX", "St": ""}
_MDOC_CALLABLE = frozenset(
    [*_MDOC_PAIRS, *_MDOC_OPEN, *_MDOC_CLOSE, *_MDOC_WORDS]
    + "Ad An Ap Ar Cd Cm Dv Em Er Ev Fa Fl Fn Ft Ic Li Lk Ms Mt Nm No Ns Pa Pf Sx Sy Ta Tn Va Vt Xr Xo Xc Eo Ec "
    "Fo Fc Bf Ef Sm Lb In Fd Ot %A %B %D %I %J %N %O %P %Q %R %T %U %V".split()
)
_MDOC_IGNORED = frozenset("Dd Os Bk Ek Rs Re Ud Bt Sm Bf Ef".split())
_MDOC = _MDOC_CALLABLE | _MDOC_IGNORED | frozenset("Dt Sh Ss Pp Lp Bl El It Bd Ed D1 Dl Nd".split())
_CLOSING = frozenset(". , ; : ? ! ) ]".split())
_OPENING = frozenset("( [".split())


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


class _Writer:
    """Output lines: filled text joined into one line per paragraph; breaks are applied when text follows."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.words: list[str] | None = None  # the open filled line
        self.start = ""  # its indent and prefix
        self.gap = 0  # before the next line: 0 nothing, 1 a new line, 2 a blank line
        self.after_heading = False  # a paragraph break right after a heading is only a new line
        self.nofill = False
        self.base = 0  # left margin, moved by .RS and lists
        self.item = False  # in the body of a .TP/.IP item: indented by 4 more
        self.margins: list[tuple[int, bool]] = []
        self.tag_next = False  # after .TP: the next text is the item's tag, on a line of its own
        self.heading_next = False  # after an .SH without arguments: the next text is the heading
        self.prefix = ""  # a bullet or number written before the next line
        self.glue = False  # the last text ended in \c: the next continues the same word

    @property
    def indent(self) -> int:
        return self.base + 4 * self.item

    def flush(self) -> None:
        if self.words is not None:
            line = " ".join(self.words).rstrip()
            # One line per paragraph, but the corpus filter drops chunks with a line over 1,000 characters.
            if len(line) > _LONGEST_LINE:
                pad = " " * (len(self.start) - len(self.start.lstrip(" ")))
                self.lines += textwrap.wrap(line, _LONGEST_LINE, initial_indent=self.start, subsequent_indent=pad)
            else:
                self.lines.append(self.start + line)
            self.words = None

    def _open(self, indent: int) -> str:
        if self.gap == 2 and self.lines and self.lines[-1]:
            self.lines.append("")
        self.gap, self.after_heading = 0, False
        start = " " * (self.base if self.prefix else indent) + self.prefix
        self.prefix = ""
        return start

    def raw(self, text: str, extra: int = 0) -> None:
        self.flush()
        self.lines.append((self._open(self.indent + extra) + text).rstrip())

    def text(self, text: str, glue_next: bool = False) -> None:
        if self.heading_next:
            self.heading_next = False
            self.heading(text)
        elif self.tag_next and text.strip():
            self.tag_next = False
            self.flush()
            self.lines.append(self._open(self.base) + text.strip())
            self.item = True
        elif self.glue and (self.words or (self.nofill and self.lines)):
            if self.words:
                self.words[-1] += text.strip() if not glue_next else text.lstrip()
            else:
                self.lines[-1] += text.rstrip()
        elif self.nofill:
            if text.strip():
                self.raw(text)
            else:
                self.gap = 2
        elif not text.strip():
            self.para()  # a blank line in filled text ends the paragraph
        else:
            if text.startswith((" ", "\t")) and self.words is not None:
                self.newline()  # a line starting with a space starts a new output line
            if self.words is None:
                self.start, self.words = self._open(self.indent), []
            self.words.append(text.strip() if not glue_next else text.lstrip())
        self.glue = glue_next

    def para(self) -> None:
        self.flush()
        self.gap = max(self.gap, 1 if self.after_heading else 2)
        self.glue = False

    def newline(self) -> None:
        self.flush()
        self.gap = max(self.gap, 1)

    def heading(self, text: str) -> None:
        self.flush()
        self.base, self.item, self.margins, self.tag_next, self.heading_next, self.prefix = 0, False, [], False, False, ""
        self.gap = 2
        self.lines.append(self._open(0) + text.strip())
        self.gap, self.after_heading = 1, True

    def push(self, base: int) -> None:
        self.flush()
        self.margins.append((self.base, self.item))
        self.base, self.item = base, False

    def pop(self) -> None:
        self.flush()
        if self.margins:
            self.base, self.item = self.margins.pop()

    def result(self) -> str:
        self.flush()
        return re.sub(r"\n{3,}", "\n\n", "\n".join(self.lines)).strip("\n")


class _Roff:
    """One pass over a page's lines; each request or macro acts on the writer."""

    def __init__(self, source: str) -> None:
        self.lines = _logical_lines(source)
        self.i = 0
        self.w = _Writer()
        self.ie: list[bool] = []  # .ie results waiting for their .el
        self.url = ""
        self.section = ""
        self.name = ""  # mdoc: the page's .Nm
        self.lists: list[list[Any]] = []  # mdoc: [list type, item count] of each open .Bl
        self.displays: list[bool] = []  # mdoc: the fill mode before each open .Bd
        self.xo: list[str] | None = None  # mdoc: parts of an .It Xo ... Xc tag
        self.no_space = False
        self.spacing = True

    def run(self) -> str:
        while self.i < len(self.lines):
            self.i += 1
            self.line(self.lines[self.i - 1])
        return self.w.result()

    def line(self, line: str) -> None:
        if line.startswith((".", "'")):
            match = _REQUEST.match(line[1:])
            assert match is not None  # the pattern matches any string
            self.request(match.group(1), match.group(2))
            return
        stripped = line.rstrip()
        glue = stripped.endswith("\\c") and not stripped.endswith("\\\\c")
        text = _inline(stripped[:-2] if glue else line)
        if self.xo is not None:
            self.xo.append(text.strip())
        else:
            self.w.text(text, glue)

    def request(self, name: str, rest: str) -> None:
        w = self.w
        if name in ("if", "ie", "el"):
            self.conditional(name, rest)
        elif name in _SKIP_BLOCK:
            args = _args(rest)
            end = args[1] if len(args) > 1 else "."
            while self.i < len(self.lines):
                self.i += 1
                ended = self.lines[self.i - 1]
                if ended.startswith((".", "'")) and ended[1:].strip() == end:
                    break
        elif name == "TS":
            self.table()
        elif name == "TH":
            args = [_inline(a) for a in _args(rest)]
            if args:
                title = f"{args[0]}({args[1]})" if len(args) > 1 and args[1] else args[0]
                w.heading(f"{title} — {args[4]}" if len(args) > 4 and args[4] else title)
        elif name in ("SH", "SS"):
            text = _inline(" ".join(_args(rest)))
            if text.strip():
                w.heading(text)
                self.section = text.strip().upper()
            else:
                w.heading_next = True
        elif name in ("PP", "LP", "P", "HP"):
            w.para()
            w.item = w.tag_next = False
        elif name in ("TP", "TQ"):
            if name == "TP":
                w.para()
            else:
                w.flush()  # .TQ: one more tag for the same body
            w.item, w.tag_next = False, True
        elif name == "IP":
            args = _args(rest)
            tag = _inline(args[0]).strip() if args else ""
            w.para()
            w.item = False
            if _BULLET.match(tag):
                w.prefix, w.item = tag + " ", True
            elif tag:
                w.tag_next = True
                w.text(tag)
            else:
                w.item = True
        elif name == "RS":
            w.push(w.base + 4)
        elif name == "RE":
            w.pop()
        elif name in ("br", "in", "ti", "ce"):
            w.newline()
        elif name in ("sp", "Sp", "bp", "YS"):
            w.para()
        elif name in ("nf", "EX", "Vb"):
            w.flush()
            w.nofill = True
        elif name in ("fi", "EE", "Ve"):
            w.flush()
            w.nofill = False
        elif name in _FONTS or name in _ALTERNATING:
            args = _args(rest)
            if args:
                w.text(_inline(("" if name in _ALTERNATING else " ").join(args)))
        elif name in ("UR", "MT"):
            self.url = rest.strip()
        elif name in ("UE", "ME"):
            w.text(f"<{self.url}>{''.join(_args(rest))}")
        elif name == "SY":
            w.newline()
            w.text(_inline(" ".join(_args(rest))))
        elif name == "OP":
            w.text("[" + _inline(" ".join(_args(rest))) + "]")
        elif name in _MDOC:
            self.mdoc(name, _args(rest))
        # Anything else (.PD, .ad, .ds, .nr, .ft, .so, .IX, macros the page defined) only changes layout.

    def conditional(self, name: str, rest: str) -> None:
        if name == "el":
            holds, body = (not self.ie.pop() if self.ie else False), rest
        else:
            holds, body = _condition(rest)
            if name == "ie":
                self.ie.append(holds)
        body = body.lstrip()
        block = body.startswith("\\{")
        if block:
            body = body[2:].lstrip()
        if holds:
            if body.strip():
                self.line(body)  # and the block's lines follow as ordinary lines; their \} are dropped
            return
        depth = block + body.count("\\{") - body.count("\\}")
        while depth > 0 and self.i < len(self.lines):
            self.i += 1
            depth += self.lines[self.i - 1].count("\\{") - self.lines[self.i - 1].count("\\}")

    def table(self) -> None:
        """A tbl table: one line per row, cells separated by two spaces; T{ ... T} text blocks joined."""
        w, tab, header = self.w, "\t", True
        cells: list[str] = []
        block: list[str] | None = None
        w.para()
        while self.i < len(self.lines):
            self.i += 1
            line = self.lines[self.i - 1]
            if line.startswith(".TE"):
                break
            if header:  # an options line ending in ";", then format lines up to one ending in "."
                match = _TABLE_TAB.search(line) if line.rstrip().endswith(";") else None
                tab = match.group(1) if match else tab
                header = not line.rstrip().endswith(".")
                continue
            if block is not None:
                if not line.startswith("T}"):
                    if not line.startswith((".", "'")):
                        block.append(_inline(line).strip())
                    continue
                cells.append(" ".join(filter(None, block)))
                block, line = None, line[2:]
                if not line.startswith(tab):
                    w.raw("  ".join(filter(None, cells)))
                    cells = []
                    continue
                line = line[1:]
            elif line.startswith(".T&"):
                header = True
                continue
            elif line.startswith((".", "'")):
                continue
            for cell in line.split(tab):
                if cell.strip().startswith("T{"):
                    block = [_inline(cell.strip()[2:]).strip()]
                    break
                if cell.strip() not in ("_", "="):
                    cells.append(_inline(cell).strip())
            if block is None:
                if any(cells):
                    w.raw("  ".join(filter(None, cells)))
                cells = []
        w.para()

    def mdoc(self, name: str, args: list[str]) -> None:
        w = self.w
        if self.xo is not None:  # inside an .It Xo ... Xc tag: collect up to Xc
            tokens = [name, *args]
            end = tokens.index("Xc") if "Xc" in tokens else len(tokens)
            self.xo.append(self.inline_mdoc(tokens[:end]))
            if end < len(tokens):
                tag, self.xo = " ".join(filter(None, self.xo)), None
                w.tag_next = True
                w.text(tag)
            return
        if name == "Sm":  # spacing mode: "off" joins the words of the following lines
            self.spacing = args[:1] == ["on"] or (not args and not self.spacing)
        if name in _MDOC_IGNORED:
            return
        if name == "Dt":
            w.heading(f"{args[0]}({args[1]})" if len(args) > 1 else " ".join(args))
        elif name in ("Sh", "Ss"):
            self.section = self.inline_mdoc(args)
            w.heading(self.section)
        elif name in ("Pp", "Lp"):
            w.para()
        elif name == "Bl":
            w.para()
            self.lists.append([next((a for a in args if a.startswith("-") and a != "-compact"), "-tag"), 0])
            w.push(w.indent)
        elif name == "El":
            if self.lists:
                self.lists.pop()
            w.pop()
            w.para()
        elif name == "It":
            kind = self.lists[-1][0] if self.lists else "-tag"
            w.para()
            w.item = False
            if kind in ("-bullet", "-dash", "-hyphen", "-enum"):
                self.lists[-1][1] += 1
                mark = {"-bullet": "•", "-enum": f"{self.lists[-1][1]}."}.get(kind, "-")
                w.prefix, w.item = mark + " ", True
            elif kind == "-column":
                cells, cell = [], []
                for token in [*args, "Ta"]:
                    if token == "Ta":
                        cells.append(self.inline_mdoc(cell))
                        cell = []
                    else:
                        cell.append(token)
                w.raw("  ".join(filter(None, cells)))
            elif "Xo" in args:
                self.xo = [self.inline_mdoc([a for a in args if a != "Xo"])]
            elif args:
                w.tag_next = True
                w.text(self.inline_mdoc(args))
            else:
                w.item = True
        elif name == "Bd":
            w.para()
            self.displays.append(w.nofill)
            w.push(w.indent + 4 * ("-offset" in args))
            w.nofill = "-literal" in args or "-unfilled" in args
        elif name == "Ed":
            w.pop()
            w.nofill = self.displays.pop() if self.displays else False
            w.para()
        elif name in ("D1", "Dl"):
            w.raw(self.inline_mdoc(args), extra=4)
        elif name == "Nd":
            w.text("— " + self.inline_mdoc(args))
        else:
            if name == "Nm" and self.section == "SYNOPSIS" and w.words:
                w.newline()
            w.text(self.inline_mdoc([name, *args]))

    def inline_mdoc(self, tokens: list[str]) -> str:
        """One mdoc line: macros that take words (Fl, Ar, Xr, Op...) applied, the others dropped."""
        parts: list[str] = []
        self.no_space = True
        self._mdoc_into(tokens, parts)
        return "".join(parts).strip()

    def _put(self, parts: list[str], text: str, attach: bool = False, opens: bool = False) -> None:
        parts.append(text if attach or self.no_space or not self.spacing else " " + text)
        self.no_space = opens

    def _words(self, tokens: list[str], i: int) -> list[str]:
        """The plain words (no macro, no punctuation) from ``tokens[i]`` on."""
        end = i
        while end < len(tokens) and tokens[end] not in _MDOC_CALLABLE and tokens[end] not in _CLOSING:
            end += 1
        return tokens[i:end]

    def _mdoc_into(self, tokens: list[str], parts: list[str]) -> None:
        i = 0
        while i < len(tokens):
            token = tokens[i]
            i += 1
            if token in _MDOC_PAIRS:
                end = len(tokens)
                while end > i and tokens[end - 1] in _CLOSING:
                    end -= 1  # trailing punctuation stays outside the brackets
                self._put(parts, _MDOC_PAIRS[token][0], opens=True)
                self._mdoc_into(tokens[i:end], parts)
                self._put(parts, _MDOC_PAIRS[token][1], attach=True)
                i = end
            elif token in _MDOC_OPEN:
                self._put(parts, _MDOC_OPEN[token], opens=True)
            elif token in _MDOC_CLOSE:
                self._put(parts, _MDOC_CLOSE[token], attach=True)
            elif token in ("Ns", "Pf", "Ap"):
                if token == "Pf" and i < len(tokens):
                    self._put(parts, _inline(tokens[i]))
                    i += 1
                elif token == "Ap":
                    self._put(parts, "'", attach=True)
                self.no_space = True
            elif token in ("Fl", "Ar", "Nm", "Xr"):
                words = self._words(tokens, i)
                i += len(words)
                if token == "Fl":
                    for word in words or [""]:
                        self._put(parts, "-" + _inline(word))
                elif token == "Xr" and len(words) >= 2:
                    self._put(parts, f"{_inline(words[0])}({words[1]})" + " ".join(["", *map(_inline, words[2:])]))
                else:
                    if token == "Nm" and words and not self.name:
                        self.name = _inline(words[0])
                    default = {"Ar": "file ...", "Nm": self.name}.get(token, "")
                    for word in words or [default]:
                        self._put(parts, _inline(word))
            elif token == "Ta":
                self._put(parts, "  ", attach=True, opens=True)
            elif token in _MDOC_WORDS:
                if _MDOC_WORDS[token]:
                    self._put(parts, _MDOC_WORDS[token])
            elif token in _MDOC_CALLABLE:
                continue  # font and meaning macros: their words follow as plain words
            else:
                self._put(parts, _inline(token), attach=token in _CLOSING, opens=token in _OPENING)


def roff_to_text(source: str) -> str:
    """Plain text of a manual page's roff source (man or mdoc macros), the way a reader sees it in a terminal.

    Headings and item tags get lines of their own; filled text becomes one line per paragraph; item bodies
    are indented by 4 spaces; paragraphs are separated by one blank line.
    """
    return _Roff(source).run()
