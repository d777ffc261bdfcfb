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
from typing import Any

from moe_experts.sources.roff_escapes import _args, _condition, _inline, _logical_lines
from moe_experts.sources.roff_mdoc import _MDOC, _Mdoc
from moe_experts.sources.roff_writer import _Writer

_REQUEST = re.compile(r"[ \t]*([^\s\\]*)[ \t]*(.*)")
_TABLE_TAB = re.compile(r"tab\s*\((.)\)")
_BULLET = re.compile(r"^(?:[•*·o\-–—]|\(?[0-9a-zA-Z]{1,2}[.)])$")
_ALTERNATING = frozenset({"BR", "BI", "IR", "RB", "RI", "IB"})
_FONTS = frozenset({"B", "I", "SM", "SB"})
_SKIP_BLOCK = frozenset({"de", "de1", "dei", "am", "am1", "ami", "ig"})


class _Roff(_Mdoc):
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


def roff_to_text(source: str) -> str:
    """Plain text of a manual page's roff source (man or mdoc macros), the way a reader sees it in a terminal.

    Headings and item tags get lines of their own; filled text becomes one line per paragraph; item bodies
    are indented by 4 spaces; paragraphs are separated by one blank line.
    """
    return _Roff(source).run()
