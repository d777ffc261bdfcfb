"""The "no domain" gate end to end on the micro workspace's router: trained, saved, loaded, and old routers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from moe_experts.routing.doc_router import DocRouter, live_dir, router_dir
from tests.integration.test_router import PROMPTS

NO_DOMAIN = {
    "emoji": "😀😂🎉🔥👍🙏💯✨🥳😎🤔🙈🌈🍕🚀" * 3,
    "repeated": "a" * 5000,
    "numbers": "\n".join(" ".join(str((i * 7919 + j * 104729) % 100000) for j in range(6)) for i in range(12)),
}


def test_manifest_records_the_gate_and_both_validation_rates(routed):
    _, manifest, _ = routed
    bar = manifest["thresholds"]["max_no_domain_score"]
    nd = manifest["metrics"]["no_domain"]
    assert 0.5 <= bar <= 1.0 and nd["threshold"] == round(bar, 5)
    # the recipe allows 1% of in-domain validation, i.e. none of the micro workspace's 64 documents
    assert nd["validation_in_domain_abstained"] == 0.0
    assert nd["validation_no_domain_caught"] >= 0.8
    assert nd["texts"]["train"] == nd["texts"]["val"] > 0 and set(nd["caught_by_kind"]) >= {"emoji", "other_language"}


def test_no_domain_text_goes_to_the_fallback_and_in_domain_text_does_not(routed):
    setup, _, _ = routed
    router = DocRouter.load(router_dir(setup.workspace.root), setup.registry)
    assert router.no_domain_gate is not None  # read back from classifier.safetensors
    positives = [t for card in setup.registry.cards for t in card.examples.positive]
    # the declared shape of an in-domain request never counts as "no domain"
    assert (router.no_domain_scores(router.embedder.embed(positives)) < router.max_no_domain_score).all()
    decisions, _ = router.route(list(NO_DOMAIN.values()))
    for name, d in zip(NO_DOMAIN, decisions):
        assert d.expert == "general" and d.abstained, name
        assert d.reason.startswith("looks like no domain: out-of-domain score") and "fallback expert 'general'" in d.reason
    decisions, _ = router.route(list(PROMPTS.values()))
    assert [d.expert for d in decisions] == list(PROMPTS)
    assert all("looks like no domain" not in d.reason for d in decisions)


def test_a_router_saved_before_the_gate_still_loads_and_routes_without_it(routed, tmp_path: Path):
    setup, _, _ = routed
    old = tmp_path / "old"
    shutil.copytree(live_dir(router_dir(setup.workspace.root)), old)  # a router saved before versions: files in place
    manifest = json.loads((old / "router.json").read_text())
    del manifest["thresholds"]["max_no_domain_score"], manifest["metrics"]["no_domain"]
    (old / "router.json").write_text(json.dumps(manifest))
    router = DocRouter.load(old, setup.registry)
    assert router.no_domain_gate is None
    decisions, _ = router.route([NO_DOMAIN["emoji"], PROMPTS["law"]])
    assert all("no domain" not in d.reason for d in decisions) and decisions[1].expert == "law"
