"""Which change to the document router's scorer would lift source-held-out accuracy, and at what cost?

Issue 14, point 9: macro source-held-out accuracy >= 90% with in-distribution accuracy
>= 98.5%. ``source_held_out.py`` measures the router as it is; this benchmark measures
the candidate improvements the issue names, on exactly the same folds and documents
(``prepare`` of source_held_out.py):

- the router's own scorers: logistic regression (C 10), kNN vote (k 10) and their average
  ("combined", what the router picks on tiny), and the same with other strengths (C 1, k 30);
- class weights: logistic regression with scikit-learn's balanced class weights;
- card examples as training points: every card's positive examples and description added to
  the logistic regression's training set with a sample weight (``--example-weight``);
- card prototypes: a softmax over the similarity to each card's mean example vector (its
  positive examples and description), alone and averaged with the kNN vote or "combined";
- chunk-level embeddings: up to 3 pieces of 1-3 sentences of every training document,
  embedded on their own and added as training points (logistic regression and kNN);
- fine-tuning the embedder (``--fine-tune SOURCE``, slow on CPU): MiniLM trained with a
  linear domain head (cross-entropy) for one epoch on the fold without SOURCE, then every
  document of that fold re-embedded; only that fold is measured (and the in-distribution
  test sample less SOURCE's documents), beside the untouched embedder on the same windows.

Every candidate is scored by its top-1 decision (no calibration, no abstention: those do not
change which expert is on top), so the router's own row here can differ slightly from
source_held_out.py's routed accuracy. Intervals: Wilson 95% per source, a stratified bootstrap for
the macro mean. Cost against the routing-latency budget: the scorer's extra time per request
(measured, on the in-distribution test sample, without the embedding every candidate shares)
and what the candidate adds to training.

    nice python benchmarks/held_out_candidates.py -w /tmp/vws --recipe router_training/doc.yaml \\
        --out benchmarks/results/held_out_candidates-2026-11-30-tiny.json [--fine-tune hpo]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import logging
import platform
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, usable_cores, write_result  # noqa: E402
from benchmarks.source_held_out import (  # noqa: E402
    Bench,
    Fold,
    add_arguments,
    bootstrap_macro,
    code_version,
    prepare,
    score,
)

from moe_experts.routing.classifier import class_prototypes  # noqa: E402

logger = logging.getLogger("held_out_candidates")

SENTENCE_END = re.compile(r"(?<=[.;:!?])\s+|\n+")
PIECES_PER_DOCUMENT = 3
PROTOTYPE_SCALE = 20.0  # sharpness of the prototype softmax (cosine similarities span about 0.1-0.7)


# ---------------------------------------------------------------------- pure parts (tests/unit/test_source_held_out.py)
def average(*log_probs: np.ndarray) -> np.ndarray:
    """The log of the mean of several distributions (N, C), as the router's "combined" scorer averages two."""
    return np.log(np.mean([np.exp(lp) for lp in log_probs], axis=0))


# Unit mean vector (C, D) of each class's vectors: the router's own card prototypes (train-router builds them so).
prototypes = class_prototypes


def pieces(text: str, key: str, n: int = PIECES_PER_DOCUMENT) -> list[str]:
    """Up to ``n`` distinct runs of 1-3 sentences (or lines) of a text, drawn deterministically from ``key``."""
    parts = [p.strip() for p in SENTENCE_END.split(text) if len(p.strip()) >= 20]
    if len(parts) <= 1:
        return []
    rng = random.Random(key)
    out = []
    for _ in range(n):
        i = rng.randrange(len(parts))
        out.append(" ".join(parts[i : i + rng.choice((1, 1, 2, 3))])[:1000])
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------- candidates
def knn(xt: np.ndarray, yt: np.ndarray, xq: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """The router's kNN vote (exact search) -> log-probabilities (N, C)."""
    from moe_experts.routing.classifier import knn_log_probs

    sims = xq @ xt.T  # (N, M)
    idx = np.argpartition(-sims, kth=min(k, sims.shape[1] - 1), axis=1)[:, :k]  # (N, k)
    return knn_log_probs(np.take_along_axis(sims, idx, axis=1), yt[idx], n_classes)


def logreg(xt: np.ndarray, yt: np.ndarray, c: float, seed: int, **fit: Any) -> Callable[[np.ndarray], np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    class_weight = fit.pop("class_weight", None)
    model = LogisticRegression(C=c, max_iter=3000, random_state=seed, class_weight=class_weight).fit(xt, yt, **fit)
    return model.predict_log_proba


def candidates(
    fold: Fold, b: Bench, xt: np.ndarray, x_cards: np.ndarray, y_cards: np.ndarray,
    x_pieces: np.ndarray, y_pieces: np.ndarray, example_weight: float,
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Every candidate scorer fitted on a fold's training vectors (N, D): name -> (vectors (Q, D) -> log-probs (Q, C))."""
    n, yt, seed = len(b.experts), fold.train_y, b.recipe.seed
    cr = b.recipe.classifier
    lr = logreg(xt, yt, cr.logreg_c, seed)
    lr1 = logreg(xt, yt, 1.0, seed)
    balanced = logreg(xt, yt, cr.logreg_c, seed, class_weight="balanced")
    xe, ye = np.vstack([xt, x_cards]), np.concatenate([yt, y_cards])
    weights = np.concatenate([np.ones(len(yt)), np.full(len(y_cards), example_weight)])
    with_examples = logreg(xe, ye, cr.logreg_c, seed, sample_weight=weights)
    protos = prototypes(x_cards, y_cards, n)  # (C, D)
    xa, ya = np.vstack([xt, x_pieces]), np.concatenate([yt, y_pieces])
    lr_pieces = logreg(xa, ya, cr.logreg_c, seed)

    def proto(x: np.ndarray) -> np.ndarray:
        from moe_experts.routing.classifier import log_softmax

        return log_softmax(PROTOTYPE_SCALE * (x @ protos.T))

    k = cr.knn_k
    return {
        "router scorer: combined (logreg C 10 + kNN 10)": lambda x: average(lr(x), knn(xt, yt, x, k, n)),
        "logreg C 10": lr,
        "kNN k 10": lambda x: knn(xt, yt, x, k, n),
        "logreg C 1": lr1,
        "kNN k 30": lambda x: knn(xt, yt, x, 30, n),
        "combined, kNN k 30": lambda x: average(lr(x), knn(xt, yt, x, 30, n)),
        "class weights: logreg balanced + kNN 10": lambda x: average(balanced(x), knn(xt, yt, x, k, n)),
        f"card examples as training points (weight {example_weight:g}) + kNN 10":
            lambda x: average(with_examples(x), knn(xt, yt, x, k, n)),
        "card prototypes alone": proto,
        "combined + card prototypes": lambda x: average(lr(x), knn(xt, yt, x, k, n), proto(x)),
        "kNN 30 + card prototypes": lambda x: average(knn(xt, yt, x, 30, n), proto(x)),
        "chunk pieces as training points: combined": lambda x: average(lr_pieces(x), knn(xa, ya, x, k, n)),
        "chunk pieces as training points: kNN 30": lambda x: knn(xa, ya, x, 30, n),
    }


def scorer_ms(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> float:
    """Milliseconds per request of a scorer alone, in one batch (the embedding it shares with every other is apart)."""
    started = time.perf_counter()
    fn(x)
    return 1000 * (time.perf_counter() - started) / len(x)


# ---------------------------------------------------------------------- fine-tuning
def fine_tuned_embedder(b: Bench, fold: Fold, *, batch: int, lr: float, max_tokens: int, seed: int) -> Any:
    """MiniLM trained for one epoch on the fold's training documents with a linear domain head (cross-entropy)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(seed)
    model = SentenceTransformer(str(b.embedder.path), device="cpu")
    body, tokenizer = model[0].auto_model, model.tokenizer
    head = torch.nn.Linear(b.embedder.dim, len(b.experts))
    optimiser = torch.optim.AdamW([*body.parameters(), *head.parameters()], lr=lr)
    order = np.random.default_rng(seed).permutation(len(fold.train))
    body.train()
    for step, start in enumerate(range(0, len(order), batch)):
        rows = order[start : start + batch]
        enc = tokenizer([fold.train[i].text for i in rows], padding=True, truncation=True, max_length=max_tokens,
                        return_tensors="pt")
        hidden = body(**enc).last_hidden_state  # (B, T, D)
        mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # (B, D)
        loss = torch.nn.functional.cross_entropy(PROTOTYPE_SCALE * head(emb), torch.as_tensor(fold.train_y[rows]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 20 == 0:
            logger.info("fine-tuning: step %d / %d, loss %.4f", step, -(-len(order) // batch), loss.item())
    body.eval()
    return model


def first_window(model: Any, texts: list[str], batch: int) -> np.ndarray:
    """Unit vectors (N, D) of the texts' first 256-token window (sentence-transformers truncates)."""
    model.max_seq_length = 256
    return model.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


def fine_tune_row(b: Bench, source: str, args: argparse.Namespace) -> dict[str, Any]:
    """Combined scorer with the untouched and the fine-tuned embedder, first window of every document, on one fold."""
    from sentence_transformers import SentenceTransformer

    fold, docs = b.folds[source], b.held[source]
    domain = next(d for d, s in b.plan if s == source)
    label, n, k = b.experts.index(domain), len(b.experts), b.recipe.classifier.knn_k
    keep = [i for i, x in enumerate(b.test_docs) if x.source != source]
    test_texts, test_y = [b.test_docs[i].text for i in keep], b.test_y[keep]
    out: dict[str, Any] = {"source": source, "train_documents": len(fold.train)}
    started = time.monotonic()
    tuned = fine_tuned_embedder(b, fold, batch=args.fine_tune_batch, lr=args.fine_tune_lr, max_tokens=128,
                                seed=b.recipe.seed)
    out["fine_tune_seconds"] = round(time.monotonic() - started, 1)
    for name, model in (("untouched", SentenceTransformer(str(b.embedder.path), device="cpu")), ("fine-tuned", tuned)):
        logger.info("fine-tune fold %s: embedding with the %s embedder", source, name)
        xt = first_window(model, [x.text for x in fold.train], b.recipe.embed_batch_size)
        xh = first_window(model, [x.text for x in docs], b.recipe.embed_batch_size)
        xs = first_window(model, test_texts, b.recipe.embed_batch_size)
        lr = logreg(xt, fold.train_y, b.recipe.classifier.logreg_c, b.recipe.seed)
        row = {}
        for scorer, fn in (("logreg C 10", lr), ("kNN k 10", lambda x: knn(xt, fold.train_y, x, k, n)),
                           ("combined", lambda x: average(lr(x), knn(xt, fold.train_y, x, k, n)))):
            row[scorer] = {"held_out": score(fn(xh).argmax(axis=1) == label),
                           "in_distribution_without_source": score(fn(xs).argmax(axis=1) == test_y)}
        out[name] = row
    return out


# ---------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--example-weight", type=float, default=20.0,
                    help="sample weight of each card example added to the logistic regression's training set")
    ap.add_argument("--fine-tune", nargs="*", default=[], metavar="SOURCE",
                    help="held-out sources whose fold also measures a fine-tuned embedder (minutes each on CPU)")
    ap.add_argument("--fine-tune-batch", type=int, default=16)
    ap.add_argument("--fine-tune-lr", type=float, default=2e-5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.monotonic()
    b = prepare(args)
    unknown = [s for s in args.fine_tune if s not in b.held]
    if unknown:
        raise SystemExit(f"--fine-tune: {unknown} are not held-out sources; these are: {sorted(b.held)}")

    # card vectors (positive examples and description, per card) and sentence pieces of every training document
    card_texts = [(b.experts.index(c.name), t) for c in b.cards for t in [*c.examples.positive, c.description]]
    x_cards = b.cache.texts([f"card/{hashlib.sha256(t.encode()).hexdigest()[:20]}" for _, t in card_texts],
                            [t for _, t in card_texts])  # (E, D)
    y_cards = np.asarray([c for c, _ in card_texts])
    train_docs = {x.id: x for f in b.folds.values() for x in f.train}
    piece_of = {doc_id: pieces(x.text, doc_id) for doc_id, x in train_docs.items()}
    t0 = time.monotonic()
    piece_ids = [f"{d}#piece{j}" for d, ps in piece_of.items() for j in range(len(ps))]
    b.cache.texts(piece_ids, [p for ps in piece_of.values() for p in ps])
    pieces_s = time.monotonic() - t0

    def fold_pieces(fold: Fold) -> tuple[np.ndarray, np.ndarray]:
        ids = [(f"{x.id}#piece{j}", y) for x, y in zip(fold.train, fold.train_y) for j in range(len(piece_of[x.id]))]
        return b.cache([i for i, _ in ids]), np.asarray([y for _, y in ids], dtype=np.int64)

    results: dict[str, dict[str, Any]] = {}
    timing: dict[str, float] = {}
    x_test = b.cache([x.id for x in b.test_docs])  # (T, D) every window: the scorers are compared on equal vectors
    for source in [None, *b.held]:
        fold = b.folds[source]
        xt = b.cache([x.id for x in fold.train])  # (N, D)
        xp, yp = fold_pieces(fold)
        logger.info("fold %s: %d training documents, %d pieces", source or "(every source)", len(xt), len(xp))
        for name, fn in candidates(fold, b, xt, x_cards, y_cards, xp, yp, args.example_weight).items():
            row = results.setdefault(name, {"held_out": {}, "correct": {}})
            if source is None:
                row["in_distribution"] = score(fn(x_test).argmax(axis=1) == b.test_y)
                timing[name] = round(scorer_ms(fn, x_test), 4)
            else:
                label = b.experts.index(next(d for d, s in b.plan if s == source))
                correct = fn(b.cache([x.id for x in b.held[source]])).argmax(axis=1) == label
                row["held_out"][source] = score(correct)
                row["correct"][source] = correct

    table = []
    for name, row in results.items():
        correct = list(row.pop("correct").values())
        lo, hi = bootstrap_macro(correct)
        row["macro"] = {"accuracy": round(float(np.mean([c.mean() for c in correct])), 5),
                        "interval_95_bootstrap": [round(lo, 5), round(hi, 5)]}
        row["scorer_ms_per_request"] = timing[name]
        row["meets_both_targets"] = row["macro"]["accuracy"] >= 0.90 and row["in_distribution"]["accuracy"] >= 0.985
        table.append({"candidate": name, **row})
        logger.info("%-60s in-distribution %.4f  macro held-out %.4f", name, row["in_distribution"]["accuracy"],
                    row["macro"]["accuracy"])

    fine_tune = [fine_tune_row(b, s, args) for s in args.fine_tune]
    result = {
        "benchmark": "held_out_candidates",
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": usable_cores(), "python": platform.python_version()},
        "command": " ".join(["python", *sys.argv]),
        "code": code_version(),
        "workspace": str(b.ws.root),
        "experts": b.experts,
        "rule": "top-1 decision of each scorer (no calibration or abstention); every window of every document",
        "target": {"macro_source_held_out_at_least": 0.90, "in_distribution_at_least": 0.985},
        "pieces": {"documents": len(piece_of), "pieces": len(piece_ids), "embedding_seconds": round(pieces_s, 1)},
        "card_vectors": len(card_texts),
        "candidates": table,
        "fine_tune": fine_tune,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_result(result, args.out, f"held_out_candidates-{result['date']}",
                 shown={"candidates": [{"candidate": r["candidate"], "in_distribution": r["in_distribution"]["accuracy"],
                                        "macro": r["macro"]["accuracy"], "ms": r["scorer_ms_per_request"]}
                                       for r in table], "fine_tune": fine_tune})


if __name__ == "__main__":
    main()
