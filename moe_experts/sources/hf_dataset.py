"""A Hugging Face dataset (hub id, local folder, or builder such as "json" with data_files).

Everything runs offline: a hub dataset must already be in the local datasets cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from moe_experts.sources.base import RawDocument, Source, SourceParams, package_version
from moe_experts.errors import DataError, SourceUnavailableError

HF_HINT = "pip install 'moe-experts[hf]'"


class HFDatasetSource(Source):
    """One document per row of one split of a dataset, taken from its text column."""

    kind: ClassVar[str] = "hf_dataset"
    install_hint: ClassVar[str] = HF_HINT

    class Params(SourceParams):
        kind: Literal["hf_dataset"] = "hf_dataset"
        name: str = Field(description='Hub id, local folder, or a builder name such as "json" or "parquet".')
        config: str | None = None
        data_files: str | list[str] | None = None
        split: str = "train"
        text_field: str = "text"
        revision: str | None = None

    params: Params  # narrows the base attribute for type checkers

    def __init__(self, params: SourceParams) -> None:
        super().__init__(params)
        self._dataset: Any = None  # loaded once by check() or the first pass

    def _where(self) -> str:
        return f"{self.params.name}[{self.params.split}]"

    def _load(self) -> Any:
        if self._dataset is not None:
            return self._dataset
        try:
            import datasets
        except ImportError as exc:
            raise SourceUnavailableError(
                f"corpus source '{self.kind}' is not available: package 'datasets' is not installed", hint=HF_HINT
            ) from exc
        p = self.params
        fix = (
            f"download '{p.name}' once on a machine that reaches the hub (datasets.load_dataset('{p.name}')) "
            "and copy the datasets cache here, or point 'name' at a local folder, "
            "or use name: json / parquet / text with 'data_files'"
        )
        try:
            dataset = datasets.load_dataset(
                p.name, p.config, data_files=p.data_files, split=p.split, revision=p.revision
            )
        except ConnectionError as exc:
            # datasets reports "not cached and the hub cannot be reached" as a ConnectionError.
            raise SourceUnavailableError(
                f"corpus source '{self.kind}' is not available: dataset '{p.name}' is not in the local cache "
                f"and the Hugging Face Hub cannot be reached ({exc})",
                hint=fix,
            ) from exc
        except (FileNotFoundError, StopIteration) as exc:
            # A missing hub id, an empty local folder, and data_files that match nothing (StopIteration
            # inside the json builder) all mean the same to the user: there is nothing to read.
            what = f"data_files {p.data_files!r}" if p.data_files else f"dataset '{p.name}'"
            raise SourceUnavailableError(
                f"corpus source '{self.kind}' is not available: {what} does not exist ({exc or 'no files found'})",
                hint=fix,
            ) from exc
        except ValueError as exc:
            raise DataError(
                f"corpus source '{self.kind}': cannot load {self._where()}: {exc}",
                hint="check 'split', 'config' and 'data_files' of the hf_dataset source in the card",
            ) from exc
        columns = list(dataset.column_names)
        if p.text_field not in columns:
            raise DataError(
                f"corpus source '{self.kind}': {self._where()} has no column '{p.text_field}' "
                f"(columns: {', '.join(columns)})",
                hint="set 'text_field' of the hf_dataset source to the column holding the text",
            )
        self._dataset = dataset
        return dataset

    def check(self) -> None:
        self._load()

    def _documents(self) -> Iterator[RawDocument]:
        field = self.params.text_field
        column = self._load().select_columns([field])
        index = 0
        for batch in column.iter(batch_size=1000):
            for value in batch[field]:
                ref = f"{self._where()}#{index}"
                index += 1
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise DataError(
                        f"corpus source '{self.kind}': {ref}: column '{field}' holds {type(value).__name__}, not text",
                        hint="set 'text_field' to a string column",
                    )
                if value.strip():
                    yield RawDocument(text=value, source=self.kind, ref=ref)

    def fingerprint(self) -> dict[str, Any]:
        local = Path(self.params.name).expanduser()
        return {
            **super().fingerprint(),
            "datasets_version": package_version("datasets"),
            "local_path": str(local.resolve()) if local.exists() else None,
        }
