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

``--grid prototypes`` scores the card prototypes' share instead: ``w * prototypes + (1 - w) / 3 * (logreg + kNN +
lexical)`` (word 1-2 grams), w from 0 to 0.5, at several softmax scales. The prototypes are what ``train-router``
builds: each card's positive examples and description, embedded and averaged (``class_prototypes``).

    nice python benchmarks/hybrid_weights.py -w /tmp/mws --cards /tmp/cards5 \\
        --out benchmarks/results/hybrid_weights-2026-12-01-tiny.json
    nice python benchmarks/hybrid_weights.py -w /tmp/mws --cards /tmp/cards5 --grid prototypes \\
        --out benchmarks/results/hybrid_weights-2026-12-01-tiny-prototypes.json
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
PROTOTYPE_WEIGHTS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5]
PROTOTYPE_SCALES = [10.0, 20.0, 30.0, 40.0]


def parts(b: Any, fold: Any, docs: list[Any], xq: np.ndarray, grid: str,
          prototypes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each scorer's probabilities (N, C) for documents ``docs`` embedded as ``xq``, fitted on the fold."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from moe_experts.routing.classifier import prototype_log_probs

    xt, yt, n = b.cache([x.id for x in fold.train]), fold.train_y, len(b.experts)
    out = {"logreg": np.exp(logreg(xt, yt, 10.0, 0)(xq)), "knn": np.exp(knn(xt, yt, xq, 10, n))}
    for name, kw in LEXICAL.items():
        if grid == "prototypes" and name != "word 1-2 grams":
            continue
        vec = TfidfVectorizer(**kw)
        model = LogisticRegression(C=10.0, max_iter=2000).fit(vec.fit_transform([d.text for d in fold.train]), yt)
        out[name] = model.predict_proba(vec.transform([d.text for d in docs]))
    if prototypes is not None:
        for scale in PROTOTYPE_SCALES:
            out[f"prototypes {scale:g}"] = np.exp(prototype_log_probs(xq, prototypes, scale))
    return out


def correct(p: dict[str, np.ndarray], y: np.ndarray, grid: str) -> dict[tuple[str, float, float], np.ndarray]:
    """Whether each mixture's top-1 is right (N,), keyed (lexical kind, logreg weight, lexical weight) or, for the
    prototypes grid, ("prototypes <scale>", prototypes' weight, its scale)."""
    if grid == "prototypes":
        rest = p["logreg"] + p["knn"] + p["word 1-2 grams"]
        return {(f"prototypes {s:g}", w, s): ((1 - w) / 3 * rest + w * p[f"prototypes {s:g}"]).argmax(axis=1) == y
                for s in PROTOTYPE_SCALES for w in PROTOTYPE_WEIGHTS}
    return {(lex, a, t): (a * p["logreg"] + t * p[lex] + (1 - a - t) * p["knn"]).argmax(axis=1) == y
            for lex in LEXICAL for a, t in WEIGHTS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--grid", choices=["weights", "prototypes"], default="weights",
                    help="weights: logreg / lexical / kNN shares; prototypes: the card prototypes' share and scale")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from moe_experts.data.split import unit_hash
    from moe_experts.routing.classifier import class_prototypes

    b = prepare(args)
    grid, protos = args.grid, None
    if grid == "prototypes":  # as train-router builds them: the cards' positive examples and descriptions
        texts = b.prototype_texts
        protos = class_prototypes(b.embedder.embed([t for _, t in texts]),
                                  np.asarray([b.experts.index(e) for e, _ in texts]), len(b.experts))
    own_val = {x.id for x in b.folds[None].val}
    held_ids = {x.id for docs in b.held.values() for x in docs}
    val = [(label, x) for label, d in enumerate(b.experts)
           for x in sample([x for x in b.corpora[d]["val"] if x.id not in own_val], 300,
                           lambda x: unit_hash(x.text, "sel-val"))]
    val = [(label, x) for label, x in val if x.id not in held_ids]
    b.cache.ensure([x for _, x in val])
    val_docs, val_y = [x for _, x in val], np.asarray([label for label, _ in val])
    full = b.folds[None]
    val_in = correct(parts(b, full, val_docs, b.cache([x.id for x in val_docs]), grid, protos), val_y, grid)
    test_in = correct(parts(b, full, b.test_docs, b.cache([x.id for x in b.test_docs]), grid, protos), b.test_y, grid)
    split_of = {x.id: s for d in b.experts for s in ("val", "test") for x in b.corpora[d][s]}
    held: dict[str, dict[Any, list[float]]] = {"val": {}, "test": {}, "all": {}}
    for source, docs in b.held.items():
        label = b.experts.index(next(d for d, s in b.plan if s == source))
        from_val = np.asarray([split_of[x.id] == "val" for x in docs])
        for key, c in correct(parts(b, b.folds[source], docs, b.cache([x.id for x in docs]), grid, protos),
                              np.full(len(docs), label), grid).items():
            held["val"].setdefault(key, []).append(float(c[from_val].mean()))
            held["test"].setdefault(key, []).append(float(c[~from_val].mean()))
            held["all"].setdefault(key, []).append(float(c.mean()))
        logging.info("fold %s done", source)
    def mixture(key: tuple[str, float, float]) -> dict[str, Any]:
        if grid == "prototypes":
            _, w, scale = key
            share = round((1 - w) / 3, 4)
            return {"prototypes": w, "scale": scale, "logreg": share, "knn": share, "lexical_weight": share,
                    "lexical": "word 1-2 grams"}
        lex, a, t = key
        return {"lexical": lex, "logreg": a, "lexical_weight": t, "knn": round(1 - a - t, 1)}

    rows = [{**mixture(key),
             "val_in": round(float(val_in[key].mean()), 5), "test_in": round(float(test_in[key].mean()), 5),
             "held_val": round(float(np.mean(held["val"][key])), 5),
             "held_test": round(float(np.mean(held["test"][key])), 5),
             "held_all": round(float(np.mean(held["all"][key])), 5),
             "held_all_per_source": dict(zip(b.held, [round(v, 5) for v in held["all"][key]]))}
            for key in val_in]
    result = {
        "benchmark": "hybrid_weights",
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": usable_cores(), "python": platform.python_version()},
        "command": " ".join(["python", *sys.argv]),
        "code": code_version(),
        "workspace": str(b.ws.root),
        "grid": grid,
        "validation_documents": len(val_docs),
        "rule": "top-1 decision of each mixture (no calibration or abstention); every window of every document",
        "rows": rows,
    }
    shown = ("prototypes", "scale") if grid == "prototypes" else ("lexical", "logreg", "lexical_weight", "knn")
    shown += ("val_in", "test_in", "held_val", "held_test", "held_all")
    best = sorted(rows, key=lambda r: -r["val_in"])[:5]
    write_result(result, args.out, f"hybrid_weights-{result['date']}{'-prototypes' if grid == 'prototypes' else ''}",
                 shown={"best_five_by_val_in": [{k: r[k] for k in shown} for r in best]})


if __name__ == "__main__":
    main()
