"""The output side of the roff converter: filled text, breaks, indents, item tags and headings as lines."""

from __future__ import annotations

import re
import textwrap

_LONGEST_LINE = 900


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
