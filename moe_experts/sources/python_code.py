"""Python source code from the interpreter's own standard library (the ``code`` domain)."""

from __future__ import annotations

import logging
import os
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from moe_experts.sources.base import RawDocument, Source, SourceParams

log = logging.getLogger(__name__)

# Test suites, IDLE and the 2to3 fixers are large, repetitive or deliberately odd code;
# site-packages would pull in whatever third-party code happens to be installed.
DEFAULT_EXCLUDE = (
    "test",
    "tests",
    "idlelib",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "pydoc_data",
)


class PythonStdlibSource(Source):
    """One document per ``.py`` file of the standard library, ordered by relative path."""

    kind: ClassVar[str] = "python_stdlib"
    install_hint: ClassVar[str] = (
        "point 'path' at a folder of Python files (the standard library ships with every CPython), "
        "or drop source 'python_stdlib' from the card"
    )

    class Params(SourceParams):
        kind: Literal["python_stdlib"] = "python_stdlib"
        path: Path | None = Field(default=None, description="Folder to read; default: this interpreter's stdlib.")
        exclude: list[str] = Field(
            default_factory=lambda: list(DEFAULT_EXCLUDE),
            description="Directory names skipped at any depth.",
        )
        max_file_bytes: int = Field(default=200_000, ge=1, description="Skip larger (usually generated) files.")

    params: Params  # narrows the base attribute for type checkers

    def _root(self) -> Path:
        path = self.params.path or Path(sysconfig.get_paths()["stdlib"])
        return path.expanduser().resolve()

    def check(self) -> None:
        root = self._root()
        if not root.is_dir():
            raise self.unavailable(f"no Python source folder at {root}")
        if next(root.rglob("*.py"), None) is None:
            raise self.unavailable(f"no .py files under {root}")

    def _files(self, root: Path) -> list[Path]:
        excluded = set(self.params.exclude)
        found: list[Path] = []
        for folder, dirs, files in os.walk(root):
            # Pruning in place stops os.walk from descending into excluded folders at all.
            dirs[:] = [d for d in dirs if d not in excluded]
            found.extend(Path(folder) / name for name in files if name.endswith(".py"))
        return sorted(found, key=lambda p: p.relative_to(root).as_posix())

    def _documents(self) -> Iterator[RawDocument]:
        root = self._root()
        for file in self._files(root):
            ref = file.relative_to(root).as_posix()
            try:
                if file.stat().st_size > self.params.max_file_bytes:
                    continue
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                # A few stdlib files are latin-1 test data or unreadable links; they are not worth failing for.
                log.debug("skipping %s: %s", file, exc)
                continue
            yield RawDocument(text=text, source=self.kind, ref=ref)

    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "resolved_path": str(self._root()),
            "python_version": platform.python_version(),
        }
