"""A Hugging Face dataset (hub id, local folder, or builder such as "json" with data_files).

Offline first: a hub dataset is read from the local datasets cache, with the hub
libraries told to stay offline for the call (``moe_experts.machine.hub_offline``),
so that one that is not cached fails at once instead of after network retries.
Only a run made online (``moe_experts.machine.online``) lets ``datasets``
download it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from moe_experts.sources.base import RawDocument, Source, SourceParams, package_version
from moe_experts.errors import DataError, SourceUnavailableError
from moe_experts.machine import allow_downloads_hint, download_note, hub_offline, online

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
        fix = _fetch_hint(p.name)
        try:
            with hub_offline():
                dataset = datasets.load_dataset(
                    p.name, p.config, data_files=p.data_files, split=p.split, revision=p.revision
                )
        except ConnectionError as exc:
            # datasets reports "not cached and the hub cannot be reached" as a ConnectionError.
            why = str(exc) if online() else download_note()
            raise SourceUnavailableError(
                f"corpus source '{self.kind}' is not available: dataset '{p.name}' is not in the local cache "
                f"and the Hugging Face Hub cannot be reached: {why} "
                f"(datasets cache: {datasets.config.HF_DATASETS_CACHE})",
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


def is_hub_dataset(name: str) -> bool:
    """Whether ``name`` would be looked up on the hub: not a local path and not a builder such as "json"."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return not Path(name).expanduser().exists() and name not in _PACKAGED_DATASETS_MODULES


def missing_dataset(params: SourceParams) -> SourceUnavailableError | None:
    """Why an ``hf_dataset`` source cannot be read without the network, or None (local, a builder, or cached).

    Looks at the datasets cache folders only; ``cards validate`` reports what this returns.
    """
    if not isinstance(params, HFDatasetSource.Params):
        return None
    try:
        import datasets
        from datasets.load import CachedDatasetModuleFactory
    except ImportError:
        return None  # check() says how to install it
    if not is_hub_dataset(params.name):
        return None
    try:
        CachedDatasetModuleFactory(params.name).get_module()
    except FileNotFoundError:
        return SourceUnavailableError(
            f"corpus source 'hf_dataset': dataset '{params.name}' is not a local folder and not in the local "
            f"datasets cache ({datasets.config.HF_DATASETS_CACHE}); {download_note()}",
            hint=_fetch_hint(params.name),
        )
    return None


def _fetch_hint(name: str) -> str:
    return (
        f"where the hub is reachable, load it once (moe-experts --online data build, or "
        f"datasets.load_dataset('{name}')) and copy that machine's datasets cache here or point HF_HOME at a copy; "
        f"or download it into a local folder (`hf download {name} --repo-type dataset --local-dir DIR`) and set "
        f"name: of the hf_dataset source to it; or use name: json / parquet / text with data_files; "
        f"{allow_downloads_hint()}"
    )

