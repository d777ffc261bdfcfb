"""Fitting the document router in memory, from labelled texts: no workspace, no files.

Embed train and validation texts; index the training vectors in FAISS; fit a
logistic regression, a kNN vote and a lexical (tf-idf) scorer (or, unsupervised,
k-means clusters); keep the scorer with the lowest calibrated validation log loss; tune the abstain
thresholds on validation. ``DocRouter.fit`` and ``train_doc_router`` (the
workspace's router) are both thin wrappers over ``fit_router``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_experts.recipes import DocRouterRecipe
from moe_experts.data.split import unit_hash
from moe_experts.routing.classifier import (
    Calibrator,
    LexicalModel,
    LogisticModel,
    NoDomainGate,
    accuracy,
    cluster_log_probs,
    combined_log_probs,
    confusion_matrix,
    expected_calibration_error,
    knn_log_probs,
    log_loss,
    macro_f1,
    class_prototypes,
    mixture_log_probs,
    prototype_log_probs,
    tune_confidence_threshold,
    tune_no_domain_threshold,
)
from moe_experts.routing.embedder import Embedder, pool_windows
from moe_experts.routing.index import VectorIndex
from moe_experts.workspace import versions

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of the saved router (router.json)
SNIPPET_CHARS = 160  # of each indexed document kept for explanations


@dataclass(frozen=True)
class Split:
    ids: list[str]
    texts: list[str]
    labels: np.ndarray  # (N,) expert index


@dataclass(frozen=True)
class FittedRouter:
    """What fitting produced, before it is a ``DocRouter``: manifest, index, tensors, calibrator, documents."""

    manifest: dict[str, Any]
    index: VectorIndex
    tensors: dict[str, np.ndarray]
    calibrator: Calibrator
    documents: list[dict[str, str]]  # id, domain, snippet of every indexed document
    example_vectors: np.ndarray  # (E, D) the examples' embeddings, for checking where they route
    lexical: LexicalModel | None = None  # the ``hybrid`` method's word scorer


def _metrics(probs: np.ndarray, y: np.ndarray, n: int) -> dict[str, Any]:
    pred = probs.argmax(axis=1)
    return {
        "documents": len(y),
        "accuracy": round(accuracy(y, pred), 5),
        "macro_f1": round(macro_f1(y, pred, n), 5),
        "log_loss": round(log_loss(probs, y), 5),
        "ece": round(expected_calibration_error(probs, y), 5),
    }


def fit_router(
    train: Split, val: Split, *, experts: list[str], domains: list[str], fallback: str, recipe: DocRouterRecipe,
    embedder: Embedder, embed: Callable[[Split], np.ndarray] | None = None,
    examples: Sequence[tuple[str, str, bool]] = (), prototype_texts: Sequence[tuple[str, str]] = (),
    unsupervised: bool = False, extra: dict[str, Any] | None = None,
) -> FittedRouter:
    """A document router fitted in memory: labels index ``experts``; ``val`` calibrates, tunes and reports.

    ``embed`` turns a split into unit vectors (default: the embedder, no cache); the positive
    ``examples`` (expert, text, positive?) widen the "far" floor and are embedded for checking.
    ``prototype_texts`` (expert, text) say what each expert is for (its card's positive examples and
    description); the ``hybrid`` scorer gives the similarity to their mean vector a share
    (``recipe.classifier.prototypes``). Without them, or at weight 0, hybrid mixes its three other scorers.
    ``DocRouter.from_fit`` makes the router.
    The recipe's ``abstain.no_domain_per_kind`` synthetic no-domain texts (see ``no_domain_texts``) are made
    from the train split to fit the "no domain" gate and from the validation split to tune and report it.
    """
    started = time.monotonic()
    n = len(experts)
    lexical: LexicalModel | None = None
    fallback_index = experts.index(fallback)
    embed = embed or (lambda split: embedder.embed(split.texts))
    t0 = time.monotonic()
    x_train = embed(train)  # (N, D)
    x_val = embed(val)  # (V, D)
    embed_seconds = time.monotonic() - t0

    ir = recipe.index
    index = VectorIndex.build(
        x_train, approximate_above=ir.approximate_above, approximate_kind=ir.approximate_kind,
        hnsw_m=ir.hnsw_m, hnsw_ef_construction=ir.hnsw_ef_construction, hnsw_ef_search=ir.hnsw_ef_search,
        ivf_nprobe=ir.ivf_nprobe, recall_k=ir.recall_k, min_recall=ir.min_recall, seed=recipe.seed,
    )
    logger.info("router: index %s over %d documents (recall@%d %.4f)", index.info.kind, index.info.size,
                index.info.recall_k, index.info.recall_at_k)
    cr = recipe.classifier
    sims, ids = index.search(x_val, cr.knn_k)  # (V, k)
    tensors: dict[str, np.ndarray] = {"doc_labels": train.labels.astype(np.int64)}

    # Validation halves by content hash: A calibrates and chooses, B reports honestly.
    half_a = np.asarray([unit_hash(t, "router-calibration") < 0.5 for t in val.texts])
    half_b = ~half_a
    candidates: dict[str, np.ndarray] = {}
    if unsupervised:
        centroids, cluster_expert, cluster_sizes = _clusters(x_train, x_val, val.labels, n, fallback_index, recipe)
        tensors |= {"centroids": centroids, "cluster_expert": cluster_expert}
        candidates["clusters"] = cluster_log_probs(x_val, centroids, cluster_expert, n)
    else:
        logreg = LogisticModel.fit(x_train, train.labels, n, c=cr.logreg_c, seed=recipe.seed)
        tensors |= {"coef": logreg.coef, "intercept": logreg.intercept}
        labels = np.where(ids >= 0, train.labels[np.clip(ids, 0, None)], -1)
        knn = knn_log_probs(sims, labels, n)
        lr = logreg.log_probs(x_val)
        candidates = {"logreg": lr, "knn": knn, "combined": combined_log_probs(lr, knn)}
        if cr.method in ("auto", "hybrid"):
            t0 = time.monotonic()
            lx = cr.lexical
            lexical = LexicalModel.fit(train.texts, train.labels, n, ngram_max=lx.ngram_max, min_df=lx.min_df,
                                       max_features=lx.max_features, c=lx.c, seed=recipe.seed)
            proto_lp = None
            if prototype_texts and cr.prototypes.weight > 0:
                prototypes = _prototypes(prototype_texts, experts, embedder)
                tensors["prototypes"] = prototypes
                proto_lp = prototype_log_probs(x_val, prototypes, cr.prototypes.scale)
            candidates["hybrid"] = hybrid_log_probs(lr, knn, lexical.log_probs(val.texts), proto_lp,
                                                    cr.prototypes.weight)
            logger.info("router: lexical scorer over %d n-grams fitted in %.1f s", len(lexical.terms),
                        time.monotonic() - t0)
        if cr.method != "auto":
            candidates = {cr.method: candidates[cr.method]}

    # Choose the scorer by validation-A log loss after its own calibration on A.
    fitted = {m: Calibrator.fit(cr.calibration, raw[half_a], val.labels[half_a]) for m, raw in candidates.items()}
    scores = {m: log_loss(fitted[m](raw[half_a]), val.labels[half_a]) for m, raw in candidates.items()}
    method = min(scores, key=scores.__getitem__)
    if method == "hybrid":
        assert lexical is not None
        tensors |= lexical.tensors()
    else:
        lexical = None
        tensors.pop("prototypes", None)
    proto = ({"weight": cr.prototypes.weight, "scale": cr.prototypes.scale, "texts": len(prototype_texts)}
             if "prototypes" in tensors else None)
    calibrator, raw = fitted[method], candidates[method]
    probs = calibrator(raw)  # (V, C)
    uncalibrated = np.exp(raw)
    comparison = {m: _metrics(fitted[m](r[half_b]), val.labels[half_b], n) for m, r in candidates.items()}

    # Abstain thresholds, tuned on all of validation.
    min_conf = tune_confidence_threshold(probs, val.labels, fallback_index, recipe.abstain.max_abstain_rate)
    nearest = sims[:, 0]
    min_sim = float(np.quantile(nearest, recipe.abstain.far_quantile)) if recipe.abstain.far_quantile > 0 else -1.0
    # Requests are usually shorter than documents, so less similar to them: the positive
    # examples (the declared shape of an in-domain request) must never count as "far".
    examples = list(examples)
    x_examples = embedder.embed([text for _, text, _ in examples]) if examples else np.zeros((0, x_train.shape[1]))
    positive = np.asarray([is_positive for _, _, is_positive in examples], dtype=bool)
    if min_sim > -1.0 and positive.any():
        example_sims, _ = index.search(x_examples, 1)
        min_sim = min(min_sim, float(example_sims[positive, 0].min()) - 1e-3)
    pred = probs.argmax(axis=1)
    gate, max_none, none_metrics = None, None, None
    if recipe.abstain.no_domain_per_kind > 0:
        gate, max_none, none_metrics = _fit_no_domain_gate(
            train, val, x_train, x_val, x_examples[positive], embed, recipe)
        tensors |= {"no_domain_coef": gate.coef, "no_domain_intercept": gate.intercept}
    abstain = abstain_mask(probs, nearest, None if gate is None else gate.scores(x_val), min_conf, min_sim, max_none)
    routed = np.where(abstain, fallback_index, pred)

    def route_vectors(x: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Routed expert index (N,) of unit vectors (N, D) and the texts they embed (what the lexical scorer
        reads): the fitted router's whole decision, vectorised."""
        s, i = index.search(x, cr.knn_k)  # (N, k)
        p = calibrator(raw_log_probs(method, tensors, x, s, i, n, lexical=lexical, texts=texts, prototypes=proto))
        none = None if gate is None else gate.scores(x)
        return np.where(abstain_mask(p, np.where(i[:, 0] >= 0, s[:, 0], -1.0), none, min_conf, min_sim, max_none),
                        fallback_index, p.argmax(axis=1))

    windows = choose_windows(val, routed, embed, embedder, recipe, route_vectors, x_val)

    metrics = {
        "calibration_half": _metrics(probs[half_a], val.labels[half_a], n),
        "held_out_half": _metrics(probs[half_b], val.labels[half_b], n),
        "held_out_half_uncalibrated_ece": round(expected_calibration_error(uncalibrated[half_b], val.labels[half_b]), 5),
        "validation": _metrics(probs, val.labels, n),
        "validation_routed": {
            "accuracy": round(accuracy(val.labels, routed), 5),
            "macro_f1": round(macro_f1(val.labels, routed, n), 5),
            "abstain_rate": round(float(abstain.mean()), 5),
            "confusion": confusion_matrix(val.labels, routed, n).tolist(),
        },
        "methods_on_held_out_half": comparison,
    }
    if none_metrics is not None:
        metrics["no_domain"] = none_metrics
    if unsupervised:
        metrics["clusters"] = {"sizes": cluster_sizes, "expert": [experts[e] for e in cluster_expert]}
    if calibrator.kind == "isotonic":
        for c in range(n):
            tensors[f"iso_x_{c}"], tensors[f"iso_y_{c}"] = calibrator.iso_x[c], calibrator.iso_y[c]

    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": "doc",
        "mode": "unsupervised" if unsupervised else "supervised",
        "experts": list(experts),
        "domains": list(domains),
        "fallback": fallback,
        **(extra or {}),
        "embedder": {"spec": recipe.embedder, **embedder.info.to_json(), "precision": embedder.precision},
        "recipe": recipe.model_dump(mode="json"),
        "recipe_fingerprint": recipe.fingerprint(),
        "documents": {"train": len(train.texts), "val": len(val.texts)},
        "index": index.info.to_json(),
        "classifier": {
            "method": method,
            "knn_k": cr.knn_k,
            **({"lexical": {"ngram_max": lexical.ngram_max, "terms": len(lexical.terms)}} if lexical else {}),
            **({"prototypes": proto} if proto else {}),
            "calibration": {"kind": calibrator.kind, "temperature": calibrator.temperature},
            "validation_log_loss_by_method": {m: round(s, 5) for m, s in scores.items()},
        },
        "thresholds": {"min_confidence": min_conf, "min_similarity": min_sim,
                       **({"max_no_domain_score": max_none} if max_none is not None else {})},
        "windows": windows,
        "metrics": metrics,
        "seconds": {"embedding": round(embed_seconds, 1), "total": round(time.monotonic() - started, 1)},
        "versions": _versions(),
    }
    documents = [{"id": doc_id, "domain": domains[label], "snippet": " ".join(text.split())[:SNIPPET_CHARS]}
                 for doc_id, text, label in zip(train.ids, train.texts, train.labels)]
    return FittedRouter(manifest, index, tensors, calibrator, documents, x_examples, lexical)


def abstain_mask(
    probs: np.ndarray, nearest: np.ndarray, no_domain: np.ndarray | None, min_confidence: float,
    min_similarity: float, max_no_domain_score: float | None,
) -> np.ndarray:
    """Which requests (N,) the router hands to the fallback: posterior (N, C) too flat, nearest training
    document (N,) too far, or "no domain" score (N,) too high (``DocRouter.decide`` says why, one at a time)."""
    out = (probs.max(axis=1) < min_confidence) | (nearest < min_similarity)
    if no_domain is not None and max_no_domain_score is not None:
        out |= no_domain >= max_no_domain_score
    return out


def hybrid_log_probs(logreg: np.ndarray, knn: np.ndarray, lexical: np.ndarray, prototypes: np.ndarray | None,
                     prototype_weight: float) -> np.ndarray:
    """The hybrid scorer (N, C): the card prototypes' share ``prototype_weight`` (when given), the rest split
    evenly between logistic regression, the kNN vote and the lexical scorer (each (N, C) log-probabilities)."""
    if prototypes is None or prototype_weight <= 0:
        return combined_log_probs(logreg, knn, lexical)
    rest = (1.0 - prototype_weight) / 3
    return mixture_log_probs([(rest, logreg), (rest, knn), (rest, lexical), (prototype_weight, prototypes)])


def _prototypes(texts: Sequence[tuple[str, str]], experts: list[str], embedder: Embedder) -> np.ndarray:
    """Each expert's prototype (C, D): the unit mean vector of its (expert, text) pairs."""
    unknown = sorted({name for name, _ in texts} - set(experts))
    if unknown:
        raise ValueError(f"prototype texts name expert(s) {unknown} that the router does not route to ({experts})")
    vectors = embedder.embed([text for _, text in texts])  # (P, D)
    return class_prototypes(vectors, np.asarray([experts.index(name) for name, _ in texts]), len(experts))


def raw_log_probs(
    method: str, tensors: dict[str, np.ndarray], vectors: np.ndarray, sims: np.ndarray, ids: np.ndarray, n_classes: int,
    *, lexical: LexicalModel | None = None, texts: Sequence[str] | None = None,
    prototypes: dict[str, Any] | None = None,
) -> np.ndarray:
    """The ``method`` scorer's uncalibrated log-posterior (N, C) of unit vectors (N, D) with their neighbours (N, k);
    ``hybrid`` also reads the ``texts`` (N) the vectors embed, with its ``lexical`` model, and, when
    ``prototypes`` (the manifest's weight and scale) is given, the ``prototypes`` tensor (C, D)."""
    if method == "clusters":
        return cluster_log_probs(vectors, tensors["centroids"], tensors["cluster_expert"], n_classes)
    labels = np.where(ids >= 0, tensors["doc_labels"][np.clip(ids, 0, None)], -1)  # (N, k)
    knn = knn_log_probs(sims, labels, n_classes)
    if method == "knn":
        return knn
    logreg = LogisticModel(tensors["coef"], tensors["intercept"]).log_probs(vectors)
    if method == "hybrid":
        if lexical is None or texts is None or len(texts) != len(vectors):
            raise ValueError("the hybrid scorer reads the requests' texts as well as their vectors: give its lexical "
                             "model and one text per vector")
        proto = (None if not prototypes else
                 prototype_log_probs(vectors, tensors["prototypes"], float(prototypes["scale"])))
        return hybrid_log_probs(logreg, knn, lexical.log_probs(texts), proto,
                                float(prototypes["weight"]) if prototypes else 0.0)
    return logreg if method == "logreg" else combined_log_probs(logreg, knn)


def choose_windows(
    val: Split, routed: np.ndarray, embed: Callable[[Split], np.ndarray], embedder: Embedder,
    recipe: DocRouterRecipe, route_vectors: Callable[[np.ndarray, Sequence[str]], np.ndarray], x_val: np.ndarray,
) -> dict[str, Any]:
    """How many windows of a request the router embeds (``windows.max`` of the recipe, or chosen on validation).

    ``routed`` (V,) is the validation decision reading every window. For each candidate k, every validation
    document longer than k windows is embedded from its first k windows only (the windows are embedded once,
    through ``embed``, so a cache keeps them) and routed again; the fewest windows whose accuracy is within
    the recipe's tolerance of reading everything win.
    """
    wr = recipe.windows
    if wr.max != "auto":
        return {"max": wr.max, "chosen_by": "recipe"}
    candidates = sorted(set(wr.candidates))
    top = candidates[-1]
    chunks = [embedder.chunks(text, top + 1) for text in val.texts]  # top + 1: whether a document is longer than top
    long_docs = [i for i, c in enumerate(chunks) if len(c) > 1]
    ids, texts, owner, weight, position = [], [], [], [], []
    for i in long_docs:
        for j, (chunk, n_tokens) in enumerate(chunks[i][:top]):
            ids.append(f"{val.ids[i]}#window{j}")
            texts.append(chunk)
            owner.append(i)
            weight.append(n_tokens)
            position.append(j)
    vecs = embed(Split(ids, texts, np.full(len(ids), -1, dtype=np.int64))) if ids else x_val[:0]  # (P, D)
    owner_a, weight_a, position_a = np.asarray(owner, dtype=np.int64), np.asarray(weight), np.asarray(position)
    full = accuracy(val.labels, routed)
    by_k: dict[str, float] = {}
    longer: dict[str, int] = {}
    chosen = None
    for k in candidates:
        x = x_val.copy()
        longer_than_k = np.asarray([i for i in long_docs if len(chunks[i]) > k], dtype=np.int64)
        texts = list(val.texts)  # what the lexical scorer reads: the text of the windows embedded
        for i in longer_than_k:
            texts[i] = "".join(chunk for chunk, _ in chunks[i][:k])
        keep = (position_a < k) & np.isin(owner_a, longer_than_k)
        if len(longer_than_k):
            pooled = pool_windows(vecs[keep], owner_a[keep], weight_a[keep], len(val.texts))  # (V, D)
            x[longer_than_k] = pooled[longer_than_k]
        acc = accuracy(val.labels, route_vectors(x, texts))
        by_k[str(k)], longer[str(k)] = round(acc, 5), len(longer_than_k)
        if chosen is None and acc >= full - wr.tolerance:
            chosen = k
    logger.info("router: reading %s windows of a request (validation accuracy %s; every window: %.4f)",
                chosen if chosen is not None else "every", by_k, full)
    return {"max": chosen, "chosen_by": "validation", "tolerance": wr.tolerance,
            "validation_accuracy": {"every": round(full, 5), **by_k}, "documents_longer_than": longer}


def _fit_no_domain_gate(
    train: Split, val: Split, x_train: np.ndarray, x_val: np.ndarray, x_positive: np.ndarray,
    embed: Callable[[Split], np.ndarray], recipe: DocRouterRecipe,
) -> tuple[NoDomainGate, float, dict[str, Any]]:
    """The "in a domain vs in none" gate: fitted on texts made from train, its threshold tuned on texts made from val."""
    ab = recipe.abstain
    made = {}
    for name, split in (("train", train), ("val", val)):
        kinds, texts = no_domain_texts(split.texts, ab.no_domain_per_kind, f"{recipe.seed}/{name}")
        # content-addressed ids, so the embedding cache reuses them across refits
        ids = [f"no-domain/{hashlib.sha256(t.encode()).hexdigest()[:20]}" for t in texts]
        made[name] = (kinds, embed(Split(ids, texts, np.full(len(texts), -1, dtype=np.int64))))
    gate = NoDomainGate.fit(x_train, made["train"][1], c=ab.no_domain_c, seed=recipe.seed)
    s_in, s_none = gate.scores(x_val), gate.scores(made["val"][1])  # (V,), (M,)
    bar = tune_no_domain_threshold(s_in, gate.scores(x_positive), ab.max_no_domain_abstain_rate)
    kinds = np.asarray(made["val"][0])
    metrics = {
        "threshold": round(bar, 5),
        "texts": {"train": len(made["train"][0]), "val": len(kinds)},
        "validation_in_domain_abstained": round(float(np.mean(s_in >= bar)), 5),
        "validation_no_domain_caught": round(float(np.mean(s_none >= bar)), 5),
        "caught_by_kind": {k: round(float(np.mean(s_none[kinds == k] >= bar)), 5) for k in NO_DOMAIN_KINDS},
    }
    logger.info("router: no-domain gate at %.3f abstains on %.4f of in-domain validation, catches %.4f of no-domain",
                bar, metrics["validation_in_domain_abstained"], metrics["validation_no_domain_caught"])
    return gate, bar, metrics


# ---------------------------------------------------------------------------- no-domain text
# Text of no domain, made deterministically from a split's own words (so the router never sees test text).
NO_DOMAIN_KINDS = ("shuffled_words", "number_table", "foreign_script", "emoji", "repeated_char", "random_chars",
                   "other_language")
# Scripts of random letters the router learns "no domain" from (code point ranges of letters). Greek, Cyrillic
# and CJK are the evaluation's foreign_script kind too (other random letters, from its own seed): held out, random
# Greek words went to medicine (its texts are full of alpha and beta), so they are taught here.
FIT_SCRIPTS = {"Arabic": (0x0627, 0x064A), "Hebrew": (0x05D0, 0x05EA), "Devanagari": (0x0905, 0x0939),
               "Thai": (0x0E01, 0x0E2E), "Hangul": (0xAC00, 0xD7A3), "Armenian": (0x0561, 0x0586),
               "Georgian": (0x10D0, 0x10F0), "Greek": (0x03B1, 0x03C9), "Cyrillic": (0x0430, 0x044F),
               "CJK": (0x4E00, 0x9FA5)}
_EMOJI = [(0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF), (0x2600, 0x26FF)]
# A few hundred common words of languages the domains are not written in. The router learns from the first
# group; the evaluation's other_language kind uses the second, which the router never saw.
FIT_LANGUAGES = {
    "German": "der die das und ist nicht ein eine ich du wir sie mit auf für von dem den zu sich auch noch nach "
              "heute morgen haus wasser kinder spielen garten sommer schön sehr gut immer wieder gestern",
    "French": "le la les et est pas un une je tu nous vous avec sur pour dans du des au ce cette aujourd'hui "
              "maison eau enfants jouer jardin été beau très bien toujours encore hier demain",
    "Indonesian": "yang dan di itu dengan untuk tidak ini dari dalam akan pada juga saya ke karena rumah air "
                  "anak bermain kebun musim panas indah sangat baik selalu lagi kemarin besok",
    "Finnish": "ja on ei se että hän oli ovat mutta kun niin kuin vain myös talo vesi lapset leikkiä puutarha "
               "kesä kaunis hyvin hyvä aina taas eilen huomenna tänään",
}
HELD_OUT_LANGUAGES = {
    "Spanish": "el la los las y es no un una yo tú nosotros con sobre para en del al este esta hoy casa agua "
               "niños jugar jardín verano bonito muy bien siempre otra vez ayer mañana",
    "Dutch": "de het een en is niet ik jij wij zij met op voor van aan te zich ook nog na vandaag huis water "
             "kinderen spelen tuin zomer mooi heel goed altijd weer gisteren morgen",
    "Swahili": "na ya wa kwa ni la za katika hii hiyo mimi wewe sisi wao nyumba maji watoto kucheza bustani "
               "kiangazi nzuri sana vizuri kila mara tena jana kesho leo",
}
_WORDS = re.compile(r"[^\W\d_]+")


def no_domain_text(
    kind: str, words: Sequence[str], rng: random.Random, *, scripts: dict[str, tuple[int, int]] | None = None,
    languages: dict[str, str] | None = None,
) -> str:
    """One text of ``kind`` (of ``NO_DOMAIN_KINDS``) as long as ``words``, a run of real words it may reuse."""
    n = max(len(words), 1)
    if kind == "shuffled_words":
        return _sentences(["".join(rng.sample(w, len(w))).lower() for w in words], rng)
    if kind == "number_table":
        cols = rng.randint(2, 6)
        cells = [rng.choice((str(rng.randint(0, 10**rng.randint(1, 6))), f"{rng.uniform(-1e3, 1e3):.{rng.randint(1, 4)}f}",
                             hex(rng.randint(0, 2**24))))
                 for _ in range(n)]
        return "\n".join(" ".join(cells[i : i + cols]) for i in range(0, n, cols))
    if kind == "foreign_script":
        lo, hi = rng.choice(sorted((scripts or FIT_SCRIPTS).values()))
        return _sentences(["".join(chr(rng.randint(lo, hi)) for _ in range(min(len(w), 12))) for w in words], rng)
    if kind == "emoji":
        sep = rng.choice(("", " "))
        return sep.join(chr(rng.randint(*rng.choice(_EMOJI))) for _ in range(rng.randint(1, 2 * n)))
    if kind == "repeated_char":
        unit = rng.choice("aexz0179.-=*#!?_~" + chr(rng.randint(*rng.choice(_EMOJI)))) * rng.choice((1, 1, 2, 3))
        return rng.choice(("", " ", "\n")).join([unit] * rng.randint(1, min(40 * n, 400)))
    if kind == "random_chars":
        alphabet = "".join(chr(c) for c in range(33, 127))
        return " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(3, 16))) for _ in range(n))
    if kind == "other_language":
        vocab = rng.choice(sorted((languages or FIT_LANGUAGES).values())).split()
        return _sentences([rng.choice(vocab) for _ in range(n)], rng)
    raise ValueError(f"unknown no-domain kind {kind!r}; one of {NO_DOMAIN_KINDS}")


def _sentences(words: list[str], rng: random.Random) -> str:
    """Words as sentences of 4-12 words (or plain words, in turn): capitalised, ending in a full stop."""
    if rng.random() < 0.5:
        return " ".join(words)
    out, i = [], 0
    while i < len(words):
        sentence = " ".join(words[i : i + rng.randint(4, 12)])
        out.append(sentence[:1].upper() + sentence[1:] + ".")
        i += len(sentence.split())
    return " ".join(out)


def no_domain_texts(texts: Sequence[str], per_kind: int, salt: str) -> tuple[list[str], list[str]]:
    """(kinds, texts): ``per_kind`` texts of every ``NO_DOMAIN_KINDS`` kind, 1-100 words each, from ``texts``' words.

    Lengths are capped because embedding is the slow part of fitting; the embedder averages windows, so a long
    run of one character or emoji embeds like a short one."""
    rng = random.Random(f"no-domain/{salt}")
    pool = [w for t in sorted(texts, key=lambda t: unit_hash(t, f"no-domain/{salt}"))[:500]
            for w in _WORDS.findall(t[:2000])][:20000] or ["word"]
    kinds, out = [], []
    for kind in NO_DOMAIN_KINDS:
        for _ in range(per_kind):
            n = rng.choice((rng.randint(1, 8), rng.randint(5, 100)))  # short requests as well as documents
            start = rng.randrange(len(pool))
            kinds.append(kind)
            out.append(no_domain_text(kind, (pool + pool)[start : start + n], rng))
    return kinds, out


def _clusters(
    x_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n: int, fallback: int, recipe: DocRouterRecipe
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Spherical FAISS k-means on the training vectors; each cluster -> its validation majority expert."""
    import faiss

    k = min(recipe.unsupervised.clusters, len(x_train))
    km = faiss.Kmeans(x_train.shape[1], k, niter=recipe.unsupervised.iterations, seed=recipe.seed,
                      spherical=True, verbose=False)
    km.train(np.ascontiguousarray(x_train, dtype=np.float32))
    centroids = km.centroids.astype(np.float32)  # (K, D)
    _, train_assign = km.index.search(x_train, 1)
    _, val_assign = km.index.search(np.ascontiguousarray(x_val, dtype=np.float32), 1)
    cluster_expert = np.full(k, fallback, dtype=np.int64)
    for c in range(k):
        members = y_val[val_assign[:, 0] == c]
        if len(members):
            cluster_expert[c] = int(np.bincount(members, minlength=n).argmax())
    sizes = np.bincount(train_assign[:, 0], minlength=k).tolist()
    return centroids, cluster_expert, sizes


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = versions()
    for dist in ("faiss-cpu", "sentence-transformers", "scikit-learn"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
