"""The user's own files: plain text, JSON lines or parquet, from a file, a folder or a glob."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from moe_experts.sources.base import RawDocument, Source, SourceParams
from moe_experts.errors import DataError, SourceUnavailableError

PYARROW_HINT = "pip install pyarrow (or pip install 'moe-experts[hf]')"


class LocalFilesSource(Source):
    """Documents from local files; txt files split per file, paragraph or line; jsonl/parquet per record."""

    kind: ClassVar[str] = "local"
    install_hint: ClassVar[str] = "fix 'path' in the card so that it names an existing file, folder or glob"

    class Params(SourceParams):
        kind: Literal["local"] = "local"
        path: str = Field(description="A file, a folder (read recursively) or a glob pattern.")
        format: Literal["txt", "jsonl", "parquet"] = "txt"
        text_field: str = Field(default="text", description="Field holding the text (jsonl and parquet).")
        unit: Literal["file", "paragraph", "line"] = Field(
            default="file", description="txt only: one document per file, per blank-line paragraph or per line."
        )
        encoding: str = "utf-8"

        @model_validator(mode="after")
        def _unit_only_for_txt(self) -> LocalFilesSource.Params:
            if self.unit != "file" and self.format != "txt":
                raise ValueError(f"unit '{self.unit}' applies to format 'txt' only; remove it for '{self.format}'")
            return self

    params: Params  # narrows the base attribute for type checkers

    def _files(self) -> list[Path]:
        path = Path(self.params.path).expanduser()
        if path.is_file():
            return [path]
        if path.is_dir():
            # Hidden files and folders (.git, .DS_Store) are tooling, not corpus.
            found = [
                p for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
        else:
            found = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
        return sorted(found, key=lambda p: p.as_posix())

    def check(self) -> None:
        if not self._files():
            raise self.unavailable(f"nothing matches path '{self.params.path}'")
        if self.params.format == "parquet":
            _import_parquet()

    def _documents(self) -> Iterator[RawDocument]:
        files = self._files()
        if not files:
            raise self.unavailable(f"nothing matches path '{self.params.path}'")
        read = {"txt": self._txt, "jsonl": self._jsonl, "parquet": self._parquet}[self.params.format]
        for file in files:
            yield from read(file)

    def _doc(self, text: str, ref: str) -> RawDocument:
        return RawDocument(text=text, source=self.kind, ref=ref)

    def _txt(self, file: Path) -> Iterator[RawDocument]:
        try:
            text = file.read_text(encoding=self.params.encoding)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{file}: not valid {self.params.encoding} text ({exc.reason} at byte {exc.start})",
                hint="set 'encoding' on the local source to the file's encoding",
            ) from exc
        unit = self.params.unit
        if unit == "file":
            if text.strip():
                yield self._doc(text, str(file))
            return
        lines = text.splitlines()
        if unit == "line":
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield self._doc(line, f"{file}:{number}")
            return
        start = 0
        paragraph: list[str] = []
        for number, line in enumerate([*lines, ""], start=1):
            if not line.strip():
                if paragraph:
                    yield self._doc("\n".join(paragraph), f"{file}:{start}")
                paragraph = []
            else:
                start = start if paragraph else number
                paragraph.append(line)

    def _jsonl(self, file: Path) -> Iterator[RawDocument]:
        field = self.params.text_field
        with file.open(encoding=self.params.encoding) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{file}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})",
                                    hint="fix or remove the line") from exc
                if not isinstance(record, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}",
                                    hint="write one object per line, e.g. {\"text\": \"...\"}")
                if field not in record:
                    raise DataError(f"{where}: no field '{field}' (fields: {', '.join(sorted(record)) or 'none'})",
                                    hint="set 'text_field' on the local source to the field holding the text")
                text = _text_value(record[field], where, field)
                if text:
                    yield self._doc(text, where)

    def _parquet(self, file: Path) -> Iterator[RawDocument]:
        parquet = _import_parquet()
        field = self.params.text_field
        table = parquet.ParquetFile(file)
        columns = table.schema_arrow.names
        if field not in columns:
            raise DataError(f"{file}: no column '{field}' (columns: {', '.join(columns)})",
                            hint="set 'text_field' on the local source to the column holding the text")
        row = 0
        for batch in table.iter_batches(columns=[field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                row += 1
                text = _text_value(value, f"{file}:{row}", field)
                if text:
                    yield self._doc(text, f"{file}:{row}")

    def fingerprint(self) -> dict[str, Any]:
        files = self._files()
        return {
            **super().fingerprint(),
            "files": [str(p.resolve()) for p in files[:1000]],
            "file_count": len(files),
            "total_bytes": sum(p.stat().st_size for p in files),
        }


def _text_value(value: object, where: str, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise DataError(f"{where}: field '{field}' is {type(value).__name__}, not text",
                    hint="point 'text_field' at a string field")


def _import_parquet() -> Any:
    try:
        import pyarrow.parquet as parquet
    except ImportError as exc:
        raise SourceUnavailableError(
            "corpus source 'local' is not available: reading parquet needs pyarrow, which is not installed",
            hint=PYARROW_HINT,
        ) from exc
    return parquet
