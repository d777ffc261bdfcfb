"""Artifacts verified at load, and a router swap that readers never see half-done (issue 14)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from moe_experts.errors import CheckpointError
from moe_experts.routing.doc_router import DocRouter, live_dir, router_dir


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0x01  # one bit of one byte: the size stays, only the hash can tell
    path.write_bytes(bytes(data))


@pytest.fixture
def router_copy(routed, tmp_path):
    setup, _, _ = routed
    copy = tmp_path / "doc"
    shutil.copytree(router_dir(setup.workspace.root), copy)
    return setup, copy


@pytest.mark.parametrize("name", ["index.faiss", "classifier.safetensors", "documents.jsonl"])
def test_one_flipped_byte_in_any_router_file_is_refused_naming_it(router_copy, name):
    setup, copy = router_copy
    _flip(live_dir(copy) / name)
    with pytest.raises(CheckpointError, match=f"{name} does not match the SHA-256") as info:
        DocRouter.load(copy, setup.registry, check_embedder=False)
    assert "train-router --force" in info.value.hint


def test_a_garbage_router_manifest_is_a_corrupted_checkpoint(router_copy):
    setup, copy = router_copy
    (live_dir(copy) / "router.json").write_text('{"experts": [')
    with pytest.raises(CheckpointError, match="router.json is unreadable or corrupted"):
        DocRouter.load(copy, setup.registry, check_embedder=False)


def test_the_size_fast_path_checks_sizes_only(router_copy, monkeypatch):
    setup, copy = router_copy
    _flip(live_dir(copy) / "documents.jsonl")
    monkeypatch.setenv("MOE_EXPERTS_VERIFY", "size")
    DocRouter.load(copy, setup.registry, check_embedder=False)  # a same-size change passes the fast path
    with (live_dir(copy) / "documents.jsonl").open("a") as f:
        f.write("\n")
    with pytest.raises(CheckpointError, match="bytes where"):
        DocRouter.load(copy, setup.registry, check_embedder=False)
    monkeypatch.setenv("MOE_EXPERTS_VERIFY", "fast")
    with pytest.raises(Exception, match="MOE_EXPERTS_VERIFY"):
        DocRouter.load(copy, setup.registry, check_embedder=False)


def test_readers_see_a_whole_router_while_it_is_published_again_and_again(router_copy):
    setup, copy = router_copy
    router = DocRouter.load(copy, setup.registry, check_embedder=False)
    failures: list[str] = []
    loads = 0
    done = threading.Event()

    def read() -> None:
        nonlocal loads
        while not done.is_set():
            try:
                DocRouter.load(copy, setup.registry, check_embedder=False)
            except Exception as exc:  # noqa: BLE001 - any failure is what this test counts
                failures.append(f"{type(exc).__name__}: {exc}")
            loads += 1

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for _ in range(25):
            router.save(copy)
    finally:
        done.set()
        for t in readers:
            t.join()
    assert loads > 25 and failures == []
    versions = [p for p in copy.iterdir() if p.name.startswith("v-")]
    assert len(versions) == 2 and live_dir(copy) in versions  # the live one and the one before it
    assert json.loads((live_dir(copy) / "router.json").read_text())["experts"] == setup.registry.names


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_readers_never_create_or_write(routed, tmp_path, monkeypatch, capsys):
    from tests.integration.test_exit_codes import run_main

    setup, _, _ = routed
    ws = tmp_path / "ws"
    shutil.copytree(setup.workspace.root, ws)
    shutil.rmtree(ws / "eval", ignore_errors=True)  # the routing suites must be built, and not cached
    base = ["--preset", "micro", "--cards", setup.registry.source_dir, "-w", str(ws)]
    before = _tree(ws)
    for args in (["data", "show"], ["experts", "list"],
                 ["ask", "--text", "def read_lines(path):", "--max-new-tokens", "2", "--explain"],
                 ["eval", "--out", str(tmp_path / "reports"), "--max-docs", "2", "--no-timing"]):
        code, err = run_main(monkeypatch, capsys, *base, *args)
        assert code == 0, err
    assert _tree(ws) == before  # not one file created, changed or touched
    assert len(list((tmp_path / "reports").glob("*/report.json"))) == 1

    missing = tmp_path / "typo"
    code, err = run_main(monkeypatch, capsys, "--preset", "micro", "--cards", setup.registry.source_dir,
                         "-w", str(missing), "data", "show")
    assert code == 4 and f"no workspace at {missing}" in err and not missing.exists()


def test_a_writer_removes_and_reports_what_interrupted_runs_left(routed, tmp_path, monkeypatch, capsys):
    from tests.integration.test_exit_codes import run_main

    setup, _, recipe = routed
    ws = tmp_path / "ws"
    shutil.copytree(setup.workspace.root, ws)
    dead = ws / "routers" / ".tmp-doc-999999999"  # a pid no process has
    dead.mkdir()
    (dead / "index.faiss").write_bytes(b"half")
    base = ["--preset", "micro", "--cards", setup.registry.source_dir, "-w", str(ws)]
    code, err = run_main(monkeypatch, capsys, *base, "train-router", "--recipe", str(recipe))
    assert code == 0, err
    assert not dead.exists() and "left by interrupted runs: routers/.tmp-doc-999999999" in err


def test_one_flipped_byte_in_any_checkpoint_or_tokenizer_file_is_refused_naming_it(trained_setup, tmp_path):
    """Weights, config, tokenizer files of a model; the workspace tokenizer; a token stream; a corpus split."""
    from dataclasses import replace

    from moe_experts.data.build import iter_documents
    from moe_experts.data.tokenizer import load_stream, load_tokenizer
    from moe_experts.modeling.checkpoints import load_checkpoint
    from moe_experts.workspace import MANIFEST, Workspace, read_json

    ws = tmp_path / "ws"
    shutil.copytree(trained_setup.workspace.root, ws)
    setup = replace(trained_setup, workspace=Workspace(ws))
    law = ws / "models" / "law"
    recorded = read_json(law / MANIFEST)["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(recorded)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        copy = tmp_path / f"law-{name}"
        shutil.copytree(law, copy)
        _flip(copy / name, at=0.9 if name == "model.safetensors" else 0.5)
        with pytest.raises(CheckpointError, match=f"{name} does not match the SHA-256"):
            load_checkpoint(copy)

    tok = ws / "tokenizer"
    _flip(tok / "tokenizer.json")
    with pytest.raises(CheckpointError, match="tokenizer.json does not match") as info:
        load_tokenizer(tok)
    assert "data tokenizer --force" in info.value.hint

    tok_hash = read_json(tok / MANIFEST)["tokenizer_hash"]
    stream = ws / "tokens" / tok_hash / "law" / "val.npy"
    _flip(stream, at=0.99)
    with pytest.raises(CheckpointError, match="val.npy does not match"):
        load_stream(setup.workspace, tok_hash, "law", "val")

    _flip(ws / "corpora" / "law" / "test.jsonl")
    with pytest.raises(CheckpointError, match="test.jsonl does not match"):
        list(iter_documents(setup.workspace, "law", "test"))
