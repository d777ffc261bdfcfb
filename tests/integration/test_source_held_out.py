"""`eval --source-held-out N`'s measurement (``evaluation.held_out``) on a workspace whose medicine domain has two
corpus sources: a router fitted without each routes that source's documents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tests.conftest import card, general_english


@pytest.fixture(scope="module")
def two_source_setup(tmp_path_factory):
    """Corpora only (routing needs no language models): code, general (fallback), and medicine from HPO and ICD-10."""
    from moe_experts.config import load_preset, load_registry
    from moe_experts.modeling.stages import Setup
    from moe_experts.pipeline import ensure_corpora
    from moe_experts.workspace import Workspace

    folder = tmp_path_factory.mktemp("cards2")
    general = folder / "general.jsonl"
    general.write_text("".join(json.dumps({"text": t}) + "\n" for t in general_english(120)))
    cards = [card("code", [{"kind": "python_stdlib", "limit": 12}]),
             card("general", [{"kind": "local", "path": str(general), "format": "jsonl"}], fallback=True),
             card("medicine", [{"kind": "hpo", "limit": 120}, {"kind": "icd10", "limit": 120}])]
    for c in cards:
        (folder / f"{c['name']}.yaml").write_text(yaml.safe_dump(c, sort_keys=False))
    preset = load_preset("micro")
    ws = Workspace(tmp_path_factory.mktemp("ws2") / "micro")
    ws.open(preset.name, preset.fingerprint())
    setup = Setup(workspace=ws, registry=load_registry(folder), preset=preset)
    ensure_corpora(setup)
    return setup


def test_each_source_is_scored_by_a_router_that_never_saw_it(two_source_setup):
    from moe_experts.data.build import iter_documents
    from moe_experts.evaluation.held_out import source_held_out
    from moe_experts.evaluation.report import source_held_out_table
    from moe_experts.recipes import DocRouterRecipe
    from moe_experts.routing.train_doc import fit_doc_router

    setup = two_source_setup
    held = source_held_out(setup, 10)
    assert [(r["domain"], r["source"]) for r in held["sources"]] == [("medicine", "hpo"), ("medicine", "icd10")]
    assert held["recipe"].startswith("the default recipe") and held["skipped"] == []
    assert set(held["sources_by_domain"]["code"]) == {"python_stdlib"}
    assert set(held["sources_by_domain"]["medicine"]) == {"hpo", "icd10"}
    for r in held["sources"]:
        scored = [d for s in ("val", "test") for d in iter_documents(setup.workspace, "medicine", s)
                  if d.source == r["source"]]
        assert r["documents"] == min(10, len(scored))
        assert sum(r["routed_to"].values()) == r["documents"]
        assert r["routed"]["correct"] == r["routed_to"].get("medicine", 0)  # medicine is not the fallback
        lo, hi = r["routed"]["interval_95"]
        assert lo <= r["routed"]["accuracy"] <= hi
    assert held["macro"]["accuracy"] == pytest.approx(np.mean([r["routed"]["accuracy"] for r in held["sources"]]),
                                                      abs=1e-5)
    lo, hi = held["macro"]["interval_95_bootstrap"]
    assert lo <= held["macro"]["accuracy"] <= hi and held["macro"]["sources"] == 2

    # the fold's router learnt nothing of the held-out source, and everything of the other one it samples
    router = fit_doc_router(setup, DocRouterRecipe(), exclude_source="hpo")
    hpo = {d.id for s in ("train", "val") for d in iter_documents(setup.workspace, "medicine", s) if d.source == "hpo"}
    trained_on = {d["id"] for d in router._documents}
    assert not trained_on & hpo and router.manifest["excluded_source"] == "hpo"
    assert any(d["domain"] == "medicine" for d in router._documents)

    table = source_held_out_table({"source_held_out": held, "routing": {}})
    assert [row[0] for row in table.rows] == ["hpo", "icd10", "macro over 2"]


def test_a_bad_document_count_is_refused(two_source_setup):
    from moe_experts.evaluation.held_out import source_held_out

    with pytest.raises(ValueError, match="per_source must be at least 1"):
        source_held_out(two_source_setup, 0)
