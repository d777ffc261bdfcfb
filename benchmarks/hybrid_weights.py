"""How much weight the hybrid scorer's three parts should get: a grid, on the folds of source_held_out.py.

The document router's ``hybrid`` method averages three distributions with equal weight: logistic regression
on the embeddings (C 10), the kNN vote (k 10), and the lexical scorer (tf-idf of word 1-2 grams, here also
of character 2-5 grams, + logistic regression C 10). This benchmark scores every mixture
``a * logreg + t * lexical + (1 - a - t) * kNN`` (a, t in steps of 0.1) by its top-1 decision, with every
window of every document (as held_out_candidates.py does), on:

- ``val_in``: a validation sample of 300 documents a domain that the router never calibrates on and that no
  held-out fold scores (in distribution, for choosing);
- ``test_in``: the in-distribution test sample of routing_accuracy.py (1,428 documents on tiny's 5 domains);
- ``held_val`` / ``held_test`` / ``held_all``: macro source-held-out accuracy over the held-out documents that
  come from the val split, the test split, and both.

    nice python benchmarks/hybrid_weights.py -w /tmp/mws --cards /tmp/cards5 \\
        --out benchmarks/results/hybrid_weights-2026-12-01-tiny.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.held_out_candidates import knn, logreg  # noqa: E402
from benchmarks.machine import cpu_model, usable_cores, write_result  # noqa: E402
from benchmarks.source_held_out import add_arguments, code_version, prepare, sample  # noqa: E402

LEXICAL = {
    "word 1-2 grams": dict(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=200_000),
    "char 2-5 grams": dict(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2, max_features=200_000),
}
WEIGHTS = [(a / 10, t / 10) for a in range(11) for t in range(11) if a + t <= 10]  # (logreg, lexical); kNN the rest


def parts(b: Any, fold: Any, docs: list[Any], xq: np.ndarray) -> dict[str, np.ndarray]:
    """Each scorer's probabilities (N, C) for documents ``docs`` embedded as ``xq``, fitted on the fold."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    xt, yt, n = b.cache([x.id for x in fold.train]), fold.train_y, len(b.experts)
    out = {"logreg": np.exp(logreg(xt, yt, 10.0, 0)(xq)), "knn": np.exp(knn(xt, yt, xq, 10, n))}
    for name, kw in LEXICAL.items():
        vec = TfidfVectorizer(**kw)
        model = LogisticRegression(C=10.0, max_iter=2000).fit(vec.fit_transform([d.text for d in fold.train]), yt)
        out[name] = model.predict_proba(vec.transform([d.text for d in docs]))
    return out


def correct(p: dict[str, np.ndarray], y: np.ndarray) -> dict[tuple[str, float, float], np.ndarray]:
    return {(lex, a, t): (a * p["logreg"] + t * p[lex] + (1 - a - t) * p["knn"]).argmax(axis=1) == y
            for lex in LEXICAL for a, t in WEIGHTS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from moe_experts.data.split import unit_hash

    b = prepare(args)
    own_val = {x.id for x in b.folds[None].val}
    held_ids = {x.id for docs in b.held.values() for x in docs}
    val = [(label, x) for label, d in enumerate(b.experts)
           for x in sample([x for x in b.corpora[d]["val"] if x.id not in own_val], 300,
                           lambda x: unit_hash(x.text, "sel-val"))]
    val = [(label, x) for label, x in val if x.id not in held_ids]
    b.cache.ensure([x for _, x in val])
    val_docs, val_y = [x for _, x in val], np.asarray([label for label, _ in val])
    full = b.folds[None]
    val_in = correct(parts(b, full, val_docs, b.cache([x.id for x in val_docs])), val_y)
    test_in = correct(parts(b, full, b.test_docs, b.cache([x.id for x in b.test_docs])), b.test_y)
    split_of = {x.id: s for d in b.experts for s in ("val", "test") for x in b.corpora[d][s]}
    held: dict[str, dict[Any, list[float]]] = {"val": {}, "test": {}, "all": {}}
    for source, docs in b.held.items():
        label = b.experts.index(next(d for d, s in b.plan if s == source))
        from_val = np.asarray([split_of[x.id] == "val" for x in docs])
        for key, c in correct(parts(b, b.folds[source], docs, b.cache([x.id for x in docs])),
                              np.full(len(docs), label)).items():
            held["val"].setdefault(key, []).append(float(c[from_val].mean()))
            held["test"].setdefault(key, []).append(float(c[~from_val].mean()))
            held["all"].setdefault(key, []).append(float(c.mean()))
        logging.info("fold %s done", source)
    rows = [{"lexical": lex, "logreg": a, "lexical_weight": t, "knn": round(1 - a - t, 1),
             "val_in": round(float(val_in[key].mean()), 5), "test_in": round(float(test_in[key].mean()), 5),
             "held_val": round(float(np.mean(held["val"][key])), 5),
             "held_test": round(float(np.mean(held["test"][key])), 5),
             "held_all": round(float(np.mean(held["all"][key])), 5),
             "held_all_per_source": dict(zip(b.held, [round(v, 5) for v in held["all"][key]]))}
            for key in val_in for lex, a, t in [key]]
    result = {
        "benchmark": "hybrid_weights",
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": usable_cores(), "python": platform.python_version()},
        "command": " ".join(["python", *sys.argv]),
        "code": code_version(),
        "workspace": str(b.ws.root),
        "validation_documents": len(val_docs),
        "rule": "top-1 decision of each mixture (no calibration or abstention); every window of every document",
        "rows": rows,
    }
    best = sorted(rows, key=lambda r: -r["val_in"])[:5]
    write_result(result, args.out, f"hybrid_weights-{result['date']}",
                 shown={"best_five_by_val_in": [{k: r[k] for k in ("lexical", "logreg", "lexical_weight", "knn", "val_in",
                                                                    "test_in", "held_all")} for r in best]})


if __name__ == "__main__":
    main()
