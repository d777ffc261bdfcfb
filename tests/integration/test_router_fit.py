"""The document router fitted from texts in memory (no workspace), saved and loaded, as semantic-router does."""

from __future__ import annotations

import numpy as np
import pytest

from moe_experts.recipes import DocRouterRecipe
from moe_experts.errors import ConfigError
from moe_experts.routing.doc_router import DocRouter

CODE = [f"def f{i}(x):\n    return x * {i} + len(str(x))  # helper {i}" for i in range(14)] + [
    "import os\nfor name in os.listdir('.'):\n    print(name)", "class Point:\n    def __init__(self, x, y):\n        self.x = x"]
LAW = [f"Section {i}. The licensee shall not sublicense the rights granted under clause {i} of this agreement."
       for i in range(14)] + ["THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND.",
                              "Redistribution and use in source and binary forms are permitted provided that"]
MEDICINE = [f"Patient {i} presents with fever, cough and elevated blood pressure; prescribe {i} mg daily."
            for i in range(14)] + ["Hypertension is persistently elevated arterial blood pressure.",
                                   "Diabetes mellitus type 2 is treated with metformin and diet."]
RECIPE = DocRouterRecipe(abstain={"far_quantile": 0.0})


@pytest.fixture(scope="module")
def fitted():
    texts = CODE + LAW + MEDICINE
    labels = ["code"] * len(CODE) + ["law"] * len(LAW) + ["medicine"] * len(MEDICINE)
    return DocRouter.fit(texts, labels, fallback="law", recipe=RECIPE, val_fraction=0.3)


def test_fit_in_memory_routes_new_texts(fitted):
    assert fitted.experts == ["code", "law", "medicine"] and fitted.folder is None
    decisions, _ = fitted.route(["def area(r):\n    return 3.14 * r * r",
                                 "The licensor disclaims all warranties, express or implied.",
                                 "The patient has a persistent cough and a high fever."], explain=True)
    assert [d.expert for d in decisions] == ["code", "law", "medicine"]
    assert decisions[0].neighbours and decisions[0].neighbours[0].domain == "code"  # documents kept in memory
    assert fitted.manifest["documents"]["train"] + fitted.manifest["documents"]["val"] == 48


def test_save_and_load_give_the_same_decisions(fitted, tmp_path):
    probe = ["for i in range(3): print(i)", "Licence terms and conditions apply.", "chest pain and fever"]
    fitted.save(tmp_path / "router")
    again = DocRouter.load(tmp_path / "router")
    a, _ = fitted.route(probe)
    b, _ = again.route(probe)
    assert [d.expert for d in a] == [d.expert for d in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(list(x.posterior.values()), list(y.posterior.values()), rtol=1e-5, atol=1e-6)
    assert again.route(probe, explain=True)[0][0].neighbours  # documents.jsonl written and read back


def test_fit_refuses_bad_input():
    with pytest.raises(ConfigError, match="fallback 'general' is none of the labels"):
        DocRouter.fit(CODE + LAW, ["code"] * 16 + ["law"] * 16, fallback="general")
    with pytest.raises(ConfigError, match="no validation text for expert"):
        DocRouter.fit(CODE + LAW, ["code"] * 16 + ["law"] * 16, fallback="law", val_texts=CODE[:2],
                      val_labels=["code", "code"])
    with pytest.raises(ConfigError, match="3 texts but 2 labels"):
        DocRouter.fit(CODE[:3], ["code", "law"], fallback="law")


def test_a_router_reads_the_windows_chosen_on_validation(fitted, tmp_path):
    import copy

    windows = fitted.manifest["windows"]
    # the validation texts are all one window long, so reading one window routes them exactly as reading all
    assert windows["chosen_by"] == "validation" and windows["max"] == 1
    assert windows["documents_longer_than"] == {"1": 0, "2": 0, "4": 0}
    assert set(windows["validation_accuracy"]) == {"every", "1", "2", "4"}
    # a request whose first window is clinical and whose remaining six are code
    clinical = " ".join(MEDICINE[i % len(MEDICINE)] for i in range(12))
    request = clinical + "\n" + "\n".join(CODE[i % len(CODE)] for i in range(120))
    assert len(fitted.embedder.chunks(request)) >= 5
    assert fitted.route([request])[0][0].expert == "medicine"
    every = copy.copy(fitted)
    every.max_windows = None
    assert every.route([request])[0][0].expert == "code"
    fitted.save(tmp_path / "router")
    assert DocRouter.load(tmp_path / "router").max_windows == 1


def test_the_recipe_can_fix_the_windows():
    texts = CODE + LAW
    labels = ["code"] * len(CODE) + ["law"] * len(LAW)
    router = DocRouter.fit(texts, labels, fallback="law", recipe=DocRouterRecipe(
        abstain={"far_quantile": 0.0, "no_domain_per_kind": 0}, windows={"max": None}), val_fraction=0.3)
    assert router.max_windows is None and router.manifest["windows"] == {"max": None, "chosen_by": "recipe"}
    with pytest.raises(ValueError, match="windows.max must be at least 1"):
        DocRouterRecipe(windows={"max": 0})


@pytest.fixture(scope="module")
def hybrid():
    texts = CODE + LAW + MEDICINE
    labels = ["code"] * len(CODE) + ["law"] * len(LAW) + ["medicine"] * len(MEDICINE)
    recipe = DocRouterRecipe(abstain={"far_quantile": 0.0}, classifier={"method": "hybrid", "lexical": {"min_df": 1}})
    return DocRouter.fit(texts, labels, fallback="law", recipe=recipe, val_fraction=0.3)


def test_a_hybrid_router_reads_words_too_and_saves_them_verified(hybrid, tmp_path):
    from moe_experts.errors import CheckpointError
    from moe_experts.routing.doc_router import LEXICON, live_dir

    assert hybrid.method == "hybrid" and hybrid.reads_text
    assert hybrid.manifest["classifier"]["lexical"]["terms"] == len(hybrid.lexical.terms) > 100
    probe = ["def area(r):\n    return 3.14 * r * r", "The licensee shall not sublicense the rights.",
             "The patient has a persistent cough and a high fever."]
    decisions, _ = hybrid.route(probe)
    assert [d.expert for d in decisions] == ["code", "law", "medicine"]
    vectors = hybrid.embedder.embed(probe, max_windows=hybrid.max_windows)
    with pytest.raises(ValueError, match="reads the requests' texts"):
        hybrid.decisions(vectors)
    hybrid.save(tmp_path / "router")
    version = live_dir(tmp_path / "router")
    assert LEXICON in hybrid.manifest["files"] and (version / LEXICON).exists()
    again = DocRouter.load(tmp_path / "router")
    for x, y in zip(decisions, again.route(probe)[0]):
        np.testing.assert_allclose(list(x.posterior.values()), list(y.posterior.values()), rtol=1e-5, atol=1e-6)
    data = bytearray((version / LEXICON).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: valid size, wrong hash
    (version / LEXICON).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{LEXICON} does not match the SHA-256"):
        DocRouter.load(tmp_path / "router")


PROTOTYPES = {
    "code": ["How do I reverse a list in Python?", "Source code: functions, classes and imports."],
    "law": ["Can I sublicense software under this licence?", "Law: licences, contracts and their clauses."],
    "medicine": ["What causes a persistent fever?", "Medicine: symptoms, diseases and treatments."],
}


def test_card_prototypes_take_their_share_of_the_hybrid_mixture(monkeypatch, tmp_path):
    """Two routers fitted on the same texts differ only by the prototypes' share w of the mixture:
    p = (1 - w) * p_without + w * softmax(scale * cos(x, unit mean of each expert's prototype texts))."""
    monkeypatch.setenv("MOE_EXPERTS_EMBED_PRECISION", "fp32")  # both fits, and this test, embed alike
    texts = CODE + LAW + MEDICINE
    labels = ["code"] * len(CODE) + ["law"] * len(LAW) + ["medicine"] * len(MEDICINE)
    recipe = DocRouterRecipe(abstain={"far_quantile": 0.0}, classifier={"method": "hybrid", "lexical": {"min_df": 1}})
    hybrid = DocRouter.fit(texts, labels, fallback="law", recipe=recipe, val_fraction=0.3)
    router = DocRouter.fit(texts, labels, fallback="law", recipe=recipe, val_fraction=0.3, prototypes=PROTOTYPES)
    w, scale = recipe.classifier.prototypes.weight, recipe.classifier.prototypes.scale
    assert router.manifest["classifier"]["prototypes"] == {"weight": w, "scale": scale, "texts": 6}
    assert "prototypes" not in hybrid.tensors and "prototypes" not in hybrid.manifest["classifier"]

    embedder = router.embedder
    expected = np.stack([embedder.embed(PROTOTYPES[e]).mean(axis=0) for e in router.experts])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(router.tensors["prototypes"], expected, atol=1e-4)

    probe = ["def area(r):\n    return 3.14 * r * r", "The licensee shall not sublicense the rights.",
             "The patient has a persistent cough and a high fever."]
    x = embedder.embed(probe, max_windows=router.max_windows)
    read = router.read_texts(probe)
    sims, ids = router.index.search(x, router.knn_k)
    with_protos = np.exp(router.raw_log_probs(x, sims, ids, read))
    without = np.exp(hybrid.raw_log_probs(x, sims, ids, read))
    z = scale * (x @ expected.T)
    proto = np.exp(z - z.max(axis=1, keepdims=True))
    proto /= proto.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(with_protos, (1 - w) * without + w * proto, rtol=1e-4, atol=1e-6)
    assert [d.expert for d in router.route(probe)[0]] == ["code", "law", "medicine"]

    router.save(tmp_path / "router")
    again = DocRouter.load(tmp_path / "router")
    assert again.prototypes == router.prototypes
    np.testing.assert_allclose(again.posteriors(x, probe)[0], router.posteriors(x, probe)[0], rtol=1e-5, atol=1e-6)
    tensors = {k: v for k, v in router.tensors.items() if k != "prototypes"}
    with pytest.raises(ValueError, match="names card prototypes but its weights hold none"):
        DocRouter(router.manifest, router.index, tensors, router.calibrator, None, lexical=router.lexical)
    with pytest.raises(ValueError, match=r"prototype texts name expert\(s\) \['unix'\]"):
        DocRouter.fit(texts, labels, fallback="law", recipe=recipe, val_fraction=0.3,
                      prototypes={**PROTOTYPES, "unix": ["ls -la"]})


def test_the_lexical_scorer_reads_only_the_windows_the_embedder_reads(hybrid):
    clinical = " ".join(MEDICINE[i % len(MEDICINE)] for i in range(12))
    request = clinical + "\n" + "\n".join(CODE[i % len(CODE)] for i in range(120))
    read = hybrid.embedder.read_text(request, 1)
    assert request.startswith(read) and read == hybrid.embedder.chunks(request, 1)[0][0] and len(read) < len(request) / 4
    assert hybrid.embedder.read_text(request, None) == request
    assert hybrid.embedder.read_text("short text", 1) == "short text"
    if hybrid.max_windows is not None:
        assert hybrid.route([request])[0][0].expert == "medicine"
