"""Sources that read the user's own data: local files (txt, jsonl, parquet) and Hugging Face datasets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from moe_experts.sources.hf_dataset import HFDatasetSource
from moe_experts.sources.local import LocalFilesSource
from moe_experts.errors import DataError, SourceUnavailableError
from tests.unit.test_sources import make


def test_local_txt_units_and_folder_order(tmp_path: Path) -> None:
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "b.txt").write_text("First paragraph\nstill first.\n\n\nSecond one.\n", encoding="utf-8")
    (tmp_path / "corpus" / "sub" / "a.txt").write_text("Only line.\n", encoding="utf-8")
    (tmp_path / "corpus" / ".hidden").write_text("skip me\n", encoding="utf-8")
    folder = str(tmp_path / "corpus")
    b_file = f"{folder}/b.txt"
    assert [d.ref for d in make(LocalFilesSource, path=folder).documents()] == [b_file, f"{folder}/sub/a.txt"]
    paragraphs = list(make(LocalFilesSource, path=b_file, unit="paragraph").documents())
    assert [(d.ref, d.text) for d in paragraphs] == [
        (f"{b_file}:1", "First paragraph\nstill first."),
        (f"{b_file}:5", "Second one."),
    ]
    lines = list(make(LocalFilesSource, path=f"{folder}/**/*.txt", unit="line").documents())
    assert [d.ref for d in lines] == [f"{b_file}:1", f"{b_file}:2", f"{b_file}:5", f"{folder}/sub/a.txt:1"]


def test_local_jsonl_reads_text_field_and_names_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"body": "one", "id": 1}\n\n{"body": "two"}\n{"body": null}\n', encoding="utf-8")
    docs = list(make(LocalFilesSource, path=str(good), format="jsonl", text_field="body").documents())
    assert [(d.ref, d.text) for d in docs] == [(f"{good}:1", "one"), (f"{good}:3", "two")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{bad}:2: invalid JSON"):
        list(make(LocalFilesSource, path=str(bad), format="jsonl").documents())
    with pytest.raises(DataError, match=r"good.jsonl:1: no field 'text' \(fields: body, id\)") as info:
        list(make(LocalFilesSource, path=str(good), format="jsonl").documents())
    assert info.value.hint


def test_local_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "rows.parquet"
    parquet.write_table(pa.table({"content": ["alpha", None, "gamma"], "n": [1, 2, 3]}), path)
    docs = list(make(LocalFilesSource, path=str(path), format="parquet", text_field="content").documents())
    assert [(d.ref, d.text) for d in docs] == [(f"{path}:1", "alpha"), (f"{path}:3", "gamma")]
    with pytest.raises(DataError, match="columns: content, n"):
        list(make(LocalFilesSource, path=str(path), format="parquet").documents())


def test_local_unit_is_txt_only() -> None:
    with pytest.raises(ValidationError, match="unit 'line' applies to format 'txt' only"):
        LocalFilesSource.Params(path="x.jsonl", format="jsonl", unit="line")


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return tmp_path


def test_hf_dataset_json_builder_with_data_files(hf_cache: Path) -> None:
    data = hf_cache / "rows.jsonl"
    data.write_text('{"text": "first row"}\n{"text": ""}\n{"text": "third row"}\n', encoding="utf-8")
    source = make(HFDatasetSource, name="json", data_files=str(data))
    source.check()
    docs = [(d.ref, d.text) for d in source.documents()]
    assert docs == [("json[train]#0", "first row"), ("json[train]#2", "third row")]
    with pytest.raises(DataError, match=r"no column 'body' \(columns: text\)"):
        make(HFDatasetSource, name="json", data_files=str(data), text_field="body").check()


def test_hf_dataset_missing_data_is_unavailable(hf_cache: Path) -> None:
    missing_folder = {"name": str(hf_cache / "no-such-folder")}
    unmatched_files = {"name": "json", "data_files": str(hf_cache / "none*.jsonl")}
    for params in (missing_folder, unmatched_files):
        with pytest.raises(SourceUnavailableError, match="hf_dataset") as info:
            make(HFDatasetSource, **params).check()
        assert "local folder" in (info.value.hint or "")


def test_hf_dataset_unreachable_hub_says_how_to_fix(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Couldn't reach 'org/corpus' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SourceUnavailableError, match="not in the local cache and the Hugging Face Hub cannot be"):
        make(HFDatasetSource, name="org/corpus").check()


def test_missing_optional_packages_are_unavailable_with_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(SourceUnavailableError, match="'datasets' is not installed") as info:
        make(HFDatasetSource, name="json").check()
    assert info.value.hint == "pip install 'moe-experts[hf]'"
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "rows.parquet").write_bytes(b"PAR1")
    with pytest.raises(SourceUnavailableError, match="pyarrow") as info:
        make(LocalFilesSource, path=str(tmp_path / "rows.parquet"), format="parquet").check()
    assert "pip install pyarrow" in (info.value.hint or "")
