"""Routing accuracy of the document router on the held-out test split, against a tf-idf baseline.

Target (issue 3): top-1 accuracy >= 95% on the test split, and at least 3 points
above a tf-idf + logistic-regression baseline trained on the same documents in
the same run; macro-F1 and the confusion matrix beside it.

The baseline learns from exactly the training documents the router indexed
(the recipe's per-domain sample, listed in routers/doc/documents.jsonl), with
scikit-learn's TfidfVectorizer (word 1-2 grams, sublinear tf) and
LogisticRegression; both are scored on the same test documents.

    python benchmarks/routing_accuracy.py -w runs/tiny [--max-test-per-domain 300] [--out results/x.json]

Needs a trained router (moe-experts quickstart or train-router).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, usable_cores, write_result  # noqa: E402
from moe_experts.config import load_preset, load_registry  # noqa: E402
from moe_experts.data.build import iter_documents  # noqa: E402
from moe_experts.data.split import unit_hash  # noqa: E402
from moe_experts.routing.classifier import accuracy, confusion_matrix, macro_f1  # noqa: E402
from moe_experts.modeling.stages import Setup  # noqa: E402
from moe_experts.routing.doc_router import DOCUMENTS, DocRouter, live_dir, router_dir  # noqa: E402
from moe_experts.routing.train_doc import embed_cached  # noqa: E402
from moe_experts.workspace import Workspace, read_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", default="runs/tiny")
    ap.add_argument("--cards", default="experts")
    ap.add_argument("--max-test-per-domain", type=int, default=300, help="test documents per domain (sampled by hash)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    ws = Workspace(Path(args.workspace).absolute())
    preset = load_preset(read_json(ws.root / "workspace.json")["preset"])
    setup = Setup(workspace=ws, registry=load_registry(Path(args.cards)), preset=preset)
    router = DocRouter.load(router_dir(ws.root), setup.registry)
    experts = router.experts
    n = len(experts)

    # the same training documents the router indexed
    indexed = {json.loads(line)["id"] for line in (live_dir(router_dir(ws.root)) / DOCUMENTS).open(encoding="utf-8")}
    train_texts, train_y, test_ids, test_texts, test_y = [], [], [], [], []
    for label, card in enumerate(setup.registry.cards):
        for d in iter_documents(ws, card.domain, "train"):
            if d.id in indexed:
                train_texts.append(d.text)
                train_y.append(label)
        docs = sorted(iter_documents(ws, card.domain, "test"), key=lambda d: unit_hash(d.text, "bench-test"))
        for d in docs[: args.max_test_per_domain]:
            test_ids.append(d.id)
            test_texts.append(d.text)
            test_y.append(label)
    y_test = np.asarray(test_y)

    t0 = time.monotonic()
    x_test = embed_cached(setup, router.embedder, test_ids, test_texts, max_windows=router.max_windows)  # (N, D)
    embed_s = time.monotonic() - t0
    decisions = router.decisions(x_test, test_texts)  # what `route` gives live, the "no domain" gate included
    pred = np.asarray([experts.index(d.predicted) for d in decisions])
    routed = np.asarray([experts.index(d.expert) for d in decisions])

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=200_000)
    xtr = vec.fit_transform(train_texts)
    base = LogisticRegression(C=10.0, max_iter=2000).fit(xtr, np.asarray(train_y))
    base_pred = base.predict(vec.transform(test_texts))

    def block(p: np.ndarray) -> dict:
        return {
            "accuracy": round(accuracy(y_test, p), 5),
            "macro_f1": round(macro_f1(y_test, p, n), 5),
            "confusion": confusion_matrix(y_test, p, n).tolist(),
        }

    result = {
        "benchmark": "routing_accuracy",
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": usable_cores(), "python": platform.python_version()},
        "workspace": str(ws.root),
        "experts": experts,
        "train_documents": len(train_texts),
        "test_documents": int(len(y_test)),
        "router_method": router.method,
        "router_top1": block(pred),
        "router_routed_with_abstain": {**block(routed), "abstain_rate": round(float(np.mean(routed != pred)), 5)},
        "tfidf_logreg_baseline": block(base_pred),
        "embedding_seconds": round(embed_s, 1),
    }
    result["margin_points"] = round(100 * (result["router_top1"]["accuracy"] - result["tfidf_logreg_baseline"]["accuracy"]), 2)
    write_result(result, args.out, f"routing_accuracy-{result['date']}",
                 shown={k: v for k, v in result.items() if k != "machine"})


if __name__ == "__main__":
    main()
