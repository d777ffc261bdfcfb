"""The document router and `moe-experts ask`, end to end on the micro workspace."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from moe_experts.config import load_registry
from moe_experts.recipes import DocRouterRecipe, load_recipe
from moe_experts.errors import MissingArtifactError, StaleArtifactError
from moe_experts.routing.doc_router import DocRouter, live_dir, router_dir
from tests.conftest import REPO
from tests.integration.test_cli import run_cli

PROMPTS = {
    "code": "def read_config(path):\n    with open(path) as f:\n        return json.load(f)",
    "law": "Redistribution and use in source and binary forms, with or without modification, are permitted",
    "medicine": "Abnormality of the liver with jaundice and hepatomegaly",
    "general": "The quiet river watched the golden garden near the market.",
}


def ask_cli(setup, *args: str, stdin: str | bytes | None = None, fresh_process: bool = False):
    """``moe-experts ask ARGS`` on the module's workspace (see ``run_cli``); bytes out, as a pipe gives."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return run_cli("--preset", "micro", "--cards", setup.registry.source_dir, "-w", str(setup.workspace.root), "ask",
                   *args, stdin=data, text=False, fresh_process=fresh_process)


def test_shipped_recipe_validates():
    recipe = load_recipe(REPO / "router_training" / "doc.yaml")
    # the shipped file spells out the built-in defaults, so running elsewhere changes nothing
    assert recipe == DocRouterRecipe()


def test_artifact_and_manifest(routed):
    setup, manifest, _ = routed
    folder = router_dir(setup.workspace.root)
    live = live_dir(folder)  # published as one version folder named by CURRENT
    assert {p.name for p in folder.iterdir()} == {"CURRENT", live.name}
    lexicon = {"lexicon.json"} if manifest["classifier"]["method"] == "hybrid" else set()  # the lexical scorer's
    assert {p.name for p in live.iterdir()} == {"router.json", "index.faiss", "classifier.safetensors",
                                                "documents.jsonl"} | lexicon
    assert set(manifest["files"]) == {"index.faiss", "classifier.safetensors", "documents.jsonl"} | lexicon
    assert manifest["experts"] == setup.registry.names and manifest["fallback"] == "general"
    assert manifest["embedder"]["sha256"] and manifest["embedder"]["dim"] == 384
    assert manifest["index"]["kind"] == "flat" and manifest["index"]["size"] == manifest["documents"]["train"]
    assert manifest["classifier"]["method"] in {"logreg", "knn", "combined", "hybrid"}
    assert set(manifest["corpus_hashes"]) == set(setup.registry.domains)
    held = manifest["metrics"]["held_out_half"]
    assert held["accuracy"] >= 0.9  # four very different domains
    assert 0.0 <= held["ece"] <= 1.0
    assert not list(setup.workspace.root.rglob("*.pkl")) and not list(setup.workspace.root.rglob(".tmp-*"))


def test_far_floor_lets_every_positive_card_example_through(routed):
    from moe_experts.routing.train_doc import train_doc_router

    setup, _, recipe_path = routed
    recipe = load_recipe(recipe_path)
    recipe = recipe.model_copy(update={"abstain": recipe.abstain.model_copy(update={"far_quantile": 0.2})})
    manifest = train_doc_router(setup, recipe)
    floor = manifest["thresholds"]["min_similarity"]
    assert floor > 0
    misrouted = manifest["metrics"]["card_examples"]["misrouted"]
    assert not [w for w in misrouted if w["kind"] == "positive" and "far from" in w["reason"]]
    train_doc_router(setup, load_recipe(recipe_path))  # put the module's router back


def test_routes_each_domain_and_posteriors_sum_to_one(routed):
    setup, _, _ = routed
    router = DocRouter.load(router_dir(setup.workspace.root), setup.registry)
    decisions, seconds = router.route(list(PROMPTS.values()), explain=True)
    assert [d.predicted for d in decisions] == list(PROMPTS)
    for d in decisions:
        assert sum(d.posterior.values()) == pytest.approx(1.0, abs=1e-5)
        assert list(d.posterior) == setup.registry.names
        assert d.neighbours and d.neighbours[0].similarity == pytest.approx(d.nearest_similarity, abs=1e-5)
    assert seconds > 0
    again, _ = router.route(list(PROMPTS.values()))
    assert [d.posterior for d in again] == [d.posterior for d in decisions]


def test_abstains_to_the_fallback_and_says_why(routed):
    setup, _, _ = routed
    router = DocRouter.load(router_dir(setup.workspace.root), setup.registry)
    router.min_similarity = 1.01
    (d,), _ = router.route([PROMPTS["law"]])
    assert d.abstained and d.expert == "general" and d.predicted == "law" and "far from every training document" in d.reason
    router.min_similarity, router.min_confidence = -1.0, 1.01
    (d,), _ = router.route([PROMPTS["law"]])
    assert d.abstained and d.expert == "general" and "low confidence" in d.reason


def test_refuses_another_expert_set(routed, tmp_path: Path):
    setup, _, _ = routed
    cards = tmp_path / "cards"
    shutil.copytree(setup.registry.source_dir, cards)
    (cards / "law.yaml").unlink()
    with pytest.raises(StaleArtifactError, match="experts: router was built for"):
        DocRouter.load(router_dir(setup.workspace.root), load_registry(cards))


def test_refuses_another_embedder(routed, tmp_path: Path):
    setup, _, _ = routed
    copy = tmp_path / "doc"
    shutil.copytree(router_dir(setup.workspace.root), copy)
    manifest = json.loads((live_dir(copy) / "router.json").read_text())
    manifest["embedder"]["sha256"] = "0" * 64
    (live_dir(copy) / "router.json").write_text(json.dumps(manifest))
    with pytest.raises(StaleArtifactError, match="embedder: router was built with"):
        DocRouter.load(copy, setup.registry)


def test_missing_router_names_the_command(tmp_path: Path, routed):
    setup, _, _ = routed
    with pytest.raises(MissingArtifactError, match="no document router"):
        DocRouter.load(tmp_path, setup.registry)


def test_unsupervised_clusters_map_to_experts(routed):
    from moe_experts.routing.train_doc import train_doc_router

    setup, _, recipe_path = routed
    recipe = load_recipe(recipe_path)
    recipe = recipe.model_copy(update={"unsupervised": recipe.unsupervised.model_copy(update={"clusters": 8})})
    other = replace(setup, workspace=replace(setup.workspace, root=setup.workspace.root.parent / "unsup"))
    shutil.copytree(setup.workspace.root / "corpora", other.workspace.root / "corpora")
    shutil.copy(setup.workspace.root / "workspace.json", other.workspace.root / "workspace.json")
    manifest = train_doc_router(other, recipe, unsupervised=True)
    assert manifest["mode"] == "unsupervised" and manifest["classifier"]["method"] == "clusters"
    assert len(manifest["metrics"]["clusters"]["sizes"]) == 8
    assert set(manifest["metrics"]["clusters"]["expert"]) <= set(setup.registry.names)
    assert manifest["metrics"]["validation"]["accuracy"] >= 0.7
    router = DocRouter.load(router_dir(other.workspace.root), setup.registry)
    (d,), _ = router.route([PROMPTS["medicine"]])
    assert d.predicted == "medicine"


# ----------------------------------------------------------------------------- ask


def test_ask_json(routed):
    setup, _, _ = routed
    out = ask_cli(setup, "--text", PROMPTS["code"], "--json", "--seed", "1", "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr.decode()
    row = json.loads(out.stdout)
    assert row["decision"]["expert"] == "code" and row["experts"] == [{"name": "code", "weight": 1.0}]
    assert set(row["decision"]["posterior"]) == set(setup.registry.names)
    assert 1 <= row["new_tokens"] <= 8 and row["timings"]["routing_ms"] > 0 and row["timings"]["generation_ms"] > 0
    again = ask_cli(setup, "--text", PROMPTS["code"], "--json", "--seed", "1", "--max-new-tokens", "8")
    assert json.loads(again.stdout)["text"] == row["text"]  # same seed, same answer


def test_ask_explain_top_k_and_forced_expert(routed):
    setup, _, _ = routed
    out = ask_cli(setup, "--text", PROMPTS["medicine"], "--explain", "--max-new-tokens", "4")
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr.decode()
    assert "expert: medicine" in text and "nearest training documents" in text and "posterior:" in text
    mixed = json.loads(ask_cli(setup, "--text", PROMPTS["medicine"], "--top-k", "2", "--json",
                               "--max-new-tokens", "4").stdout)
    assert len(mixed["experts"]) == 2 and sum(e["weight"] for e in mixed["experts"]) == pytest.approx(1.0, abs=1e-5)
    forced = json.loads(ask_cli(setup, "--text", PROMPTS["medicine"], "--expert", "law", "--json",
                                "--max-new-tokens", "4").stdout)
    assert forced["experts"] == [{"name": "law", "weight": 1.0}]


def test_ask_stdin_and_file(routed, tmp_path: Path):
    setup, _, _ = routed
    out = ask_cli(setup, "--text", "-", "--json", "--max-new-tokens", "4", stdin=PROMPTS["law"])
    assert out.returncode == 0 and json.loads(out.stdout)["decision"]["predicted"] == "law"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": d, "text": t}) + "\n" for d, t in PROMPTS.items()))
    out = ask_cli(setup, "--file", str(prompts), "--json", "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr.decode()
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [r["id"] for r in rows] == list(PROMPTS)
    assert [r["decision"]["predicted"] for r in rows] == list(PROMPTS)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--text", ""], None, "the request is empty"),
        (["--text", "   \n\t "], None, "the request is empty"),
        (["--text", "-"], b"caf\xe9 au lait", "not valid UTF-8"),
        (["--text", "-"], b"x" * 1_048_576, "the request is 1,048,576 bytes; the limit is 100,000"),
        (["--text", "hello there", "--expert", "astrology"], None, "unknown expert 'astrology'"),
        (["--text", "hello", "--top-k", "9"], None, "--top-k must be between 1 and 4"),
        ([], None, "exactly one of --text and --file"),
    ],
)
def test_ask_bad_input(routed, args, stdin, message):
    setup, _, _ = routed
    out = ask_cli(setup, *args, stdin=stdin)
    err = out.stderr.decode()
    assert out.returncode == 2, err
    assert message in err and "Traceback" not in err


def test_ask_without_router_and_with_a_router_for_other_experts(routed, tmp_path: Path):
    setup, _, _ = routed
    cards = tmp_path / "cards"
    shutil.copytree(setup.registry.source_dir, cards)
    extra = yaml.safe_load((cards / "law.yaml").read_text()) | {"name": "patents", "domain": "patents"}
    (cards / "patents.yaml").write_text(yaml.safe_dump(extra))
    base = ["--preset", "micro", "-w", str(setup.workspace.root)]
    other = run_cli(*base, "--cards", str(cards), "ask", "--text", "hello")
    assert other.returncode == 4 and "experts: router was built for" in other.stderr
    empty_ws = tmp_path / "ws"
    none = run_cli("--preset", "micro", "--cards", setup.registry.source_dir, "-w", str(empty_ws), "ask", "--text", "hello")
    # a reader never creates the workspace a mistyped --workspace names: it says which path is missing
    assert none.returncode == 4 and f"no workspace at {empty_ws}" in none.stderr and "Traceback" not in none.stderr
    assert not empty_ws.exists()


def test_train_router_no_build_says_what_to_run(routed, tmp_path: Path):
    setup, _, _ = routed
    out = run_cli("--preset", "micro", "--cards", setup.registry.source_dir, "-w", str(tmp_path / "fresh"),
                  "train-router", "--no-build")
    assert out.returncode == 4 and "moe-experts quickstart" in out.stderr and "Traceback" not in out.stderr


def test_train_router_reuses_a_current_router(routed):
    setup, _, recipe_path = routed
    out = run_cli("--preset", "micro", "--cards", setup.registry.source_dir, "-w", str(setup.workspace.root),
                  "train-router", "--recipe", str(recipe_path))
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout


def test_embeddings_are_cached(routed):
    setup, _, _ = routed
    # one cache of whole documents; windows-bounded caches (``<hash>-first<N>``) sit beside it
    caches = [p for p in (setup.workspace.root / "embeddings").glob("*/vectors.npy") if "-first" not in p.parent.name]
    assert len(caches) == 1
    vectors = np.load(caches[0], allow_pickle=False)
    assert vectors.shape[1] == 384
