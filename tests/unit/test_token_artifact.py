"""The token router's folder is published as one unit: a reader loads a whole old or a whole new MoE, never a mix.

A tiny merged Mixtral (2 layers, hidden 32) with a word-level tokenizer; each save gets gates filled with its
own number, recorded in its manifest, so a load that mixed two saves' files would show two numbers.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from moe_experts.errors import MissingArtifactError, StaleArtifactError
from moe_experts.routing.token_artifact import (
    load_token_router,
    publish_token_router,
    token_manifest,
    token_router_dir,
    token_router_home,
)
from moe_experts.routing.token_moe import MergeSpec, merge_experts
from moe_experts.workspace import CURRENT, MANIFEST, read_json
from tests.unit.test_token_moe import llama

EXPERTS = ["a", "b"]


@pytest.fixture(scope="module")
def tiny():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": 4 + i for i in range(20)}}
    raw = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    moe = merge_experts([llama(0), llama(1)], [llama(0), llama(1)], MergeSpec(experts=tuple(EXPERTS)))
    return moe, tok


def _save(moe, tok, root: Path, n: int) -> dict:
    with torch.no_grad():
        for layer in moe.model.layers:
            layer.mlp.gate.weight.fill_(float(n))  # this save's mark, in every layer
    return publish_token_router(moe, tok, root, {"experts": EXPERTS, "save": n}, health={"dead": []},
                                health_text="token share per expert")


def _save_number(loaded) -> int:
    """The save a loaded router came from, after checking its weights and manifest agree."""
    marks = {float(layer.mlp.gate.weight.detach().flatten()[0]) for layer in loaded.model.model.layers}
    assert marks == {float(loaded.manifest["save"])}, (marks, loaded.manifest["save"])
    return loaded.manifest["save"]


def test_published_as_a_version_named_by_current(tiny, tmp_path):
    moe, tok = tiny
    with pytest.raises(MissingArtifactError, match="train-router --kind token"):
        load_token_router(tmp_path)
    _save(moe, tok, tmp_path, 1)
    home, live = token_router_home(tmp_path), token_router_dir(tmp_path)
    assert live.parent == home and live.name.startswith("v-") and (home / CURRENT).read_text().strip() == live.name
    assert {p.name for p in home.iterdir()} == {CURRENT, live.name}
    assert {"model.safetensors", "config.json", MANIFEST, "health.json", "health.md"} <= {p.name for p in live.iterdir()}
    assert token_manifest(live)["save"] == 1 and read_json(live / "health.json") == {"dead": []}
    assert _save_number(load_token_router(tmp_path)) == 1


def test_a_router_saved_before_versions_is_read_then_replaced(tiny, tmp_path):
    from moe_experts.modeling.checkpoints import save_checkpoint

    moe, tok = tiny
    with torch.no_grad():
        for layer in moe.model.layers:
            layer.mlp.gate.weight.fill_(7.0)
    home = token_router_home(tmp_path)
    save_checkpoint(moe, tok, home, {"experts": EXPERTS, "save": 7})  # the old layout: files in routers/token/
    (home / "health.json").write_text("{}")
    assert token_router_dir(tmp_path) == home and _save_number(load_token_router(tmp_path)) == 7
    _save(moe, tok, tmp_path, 8)
    live = token_router_dir(tmp_path)
    assert {p.name for p in home.iterdir()} == {CURRENT, live.name}  # the old layout's files are gone
    assert _save_number(load_token_router(tmp_path)) == 8


def test_check_refuses_the_manifest_before_the_weights_load(tiny, tmp_path, monkeypatch):
    import moe_experts.routing.token_artifact as artifact

    moe, tok = tiny
    _save(moe, tok, tmp_path, 1)

    def refuse(manifest):
        raise StaleArtifactError(f"built for {manifest['experts']}")

    monkeypatch.setattr(artifact, "load_checkpoint", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(StaleArtifactError, match=r"built for \['a', 'b'\]"):
        load_token_router(tmp_path, check=refuse)


def test_readers_see_a_whole_router_while_it_is_published_again_and_again(tiny, tmp_path):
    moe, tok = tiny
    _save(moe, tok, tmp_path, 0)
    resolved = token_router_dir(tmp_path)  # a reader that resolved CURRENT before the saves
    failures: list[str] = []
    seen: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(_save_number(load_token_router(tmp_path)))
            except Exception as exc:  # noqa: BLE001 - any failure is what this test counts
                failures.append(f"{type(exc).__name__}: {exc}")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        saves = 12
        for n in range(1, saves + 1):
            _save(moe, tok, tmp_path, n)
    finally:
        done.set()
        reader.join()
    assert failures == [] and len(seen) >= 2 and seen == sorted(seen)  # whole routers, never an older after a newer
    assert set(seen) <= set(range(saves + 1))
    assert len([p for p in token_router_home(tmp_path).iterdir() if p.name.startswith("v-")]) == 2
    assert not resolved.exists()  # pruned: a reader holding it would re-resolve (read_live)
    assert _save_number(load_token_router(tmp_path)) == saves
