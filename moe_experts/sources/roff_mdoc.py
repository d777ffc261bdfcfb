"""The BSD ``mdoc`` macros (OpenSSH, tmux and other BSD-born pages) for the roff converter.

A mixin of ``roff._Roff``: the man-macro reader hands every mdoc macro to ``mdoc``, which acts on the
same writer and state.
"""

from __future__ import annotations

from typing import Any

from moe_experts.sources.roff_escapes import _inline
from moe_experts.sources.roff_writer import _Writer

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


class _Mdoc:
    """The mdoc macros; the state they share with the man reader is set in ``_Roff.__init__``."""

    w: _Writer
    section: str
    name: str  # the page's .Nm
    lists: list[list[Any]]  # [list type, item count] of each open .Bl
    displays: list[bool]  # the fill mode before each open .Bd
    xo: list[str] | None  # parts of an .It Xo ... Xc tag
    no_space: bool
    spacing: bool

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

