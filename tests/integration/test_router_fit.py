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
