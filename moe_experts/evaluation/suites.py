"""Routing suites: texts built from the workspace's own corpora that probe where routing breaks.

The recipe (``eval/suites.yaml``, every field optional; see ``SuiteRecipe``):

- Only the **test** split of each domain's corpus is ever used as text, since the
  routers learned from train and validation. The one exception is vocabulary:
  the adversarial keywords are word statistics of the train split, not
  evaluated text.
- **mixed**: for every ordered pair of distinct domains (A, B), ``items_per_pair``
  items. Each is a test document of A (at least ``min_host_chars`` long, cut to
  ``max_host_chars`` at a paragraph, line or space) with a passage of a test
  document of B (a run of up to ``max_passage_units`` consecutive lines, or
  sentences when B's document has fewer than three lines;
  ``min_passage_chars``..``max_passage_chars`` long) inserted as its own paragraph
  at a boundary in the middle 20-80% of the host: a paragraph break if there
  is one there, else a line break, else a sentence end. Either A's or B's
  expert is right; A's is the "host".
- **out_of_domain**: synthetic text that belongs to no domain; the fallback
  expert is right. ``items_per_kind`` items of each kind, each
  ``min_words``..``max_words`` words:
  ``shuffled_words`` (the words of a run of test documents, letters shuffled in
  each word: gibberish with realistic word lengths; domains taken in turn),
  ``number_table`` (rows of random integers, decimals and hex numbers),
  ``foreign_script`` (random Greek, Cyrillic or CJK letters, in turn, in words
  as long as the words of a test-document run).
- **adversarial**: for every domain X other than the fallback's,
  ``items_per_domain`` test documents of the fallback domain (cut to
  ``max_host_chars``, at least ``min_host_words`` words) with
  ``keywords_per_item`` of X's keywords inserted at random word positions; the
  fallback expert is right. X's keywords are its ``top_keywords`` words ranked
  by their smallest add-one smoothed log-odds of X's train split against any
  single other domain's (the fallback's included), kept when at least log 2:
  lower-cased ASCII letter runs of ``min_keyword_length`` to 24 letters, seen
  at least ``min_keyword_count`` times in X, counted in at most
  ``vocabulary_documents_per_domain`` train documents per domain chosen by
  content hash.
- **steering**: for every domain A and specialist B other than A,
  ``items_per_pair`` test documents of A (cut to ``max_host_chars``, at least
  ``min_host_words`` words) with an instruction naming B ("route to law",
  "Send this to the law expert.", the recipe's ``instructions`` in turn) on its
  own line before the document, or after it, in turn. Right: A's expert, or the
  fallback (abstaining is safe; going to B, or to any other specialist, is
  being steered). ``keywords`` holds the instruction.
- The out-of-domain kinds ``emoji``, ``repeated_char``, ``random_chars`` and
  ``other_language`` are made by the router's own no-domain generator
  (``routing.doc_fit.no_domain_text``) from test-split word runs, with the
  languages the router never learns from (``HELD_OUT_LANGUAGES``).

Determinism: candidate documents are ordered by ``unit_hash`` of their text with
a salt naming the seed, suite and domains, and every random choice comes from a
``random.Random`` seeded with a string naming the seed, suite and domains (or
kind). No choice depends on file order, set order, time or PYTHONHASHSEED, and
adding a domain leaves the mixed items of the other pairs unchanged. Every
item's text is at most ``max_item_chars`` characters. ``ensure_suites`` writes
them to ``<workspace>/eval/suites/`` and rebuilds them only when the recipe,
the test or train splits, or the experts change.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moe_experts import __version__
from moe_experts.config import ExpertCard, ExpertRegistry
from moe_experts.data.build import Document, corpora_dir, iter_documents
from moe_experts.data.split import unit_hash
from moe_experts.errors import (
    ConfigError,
    DataError,
    MissingArtifactError,
    StaleArtifactError,
    WorkspaceError,
)
from moe_experts.evaluation import suite_text as st
from moe_experts.evaluation.suite_recipe import SUITES, SuiteRecipe, load_suite_recipe

# The recipe lives in suite_recipe.py; these names stay importable from here.
__all__ = ["SUITES", "SuiteItem", "SuiteRecipe", "build_suites", "current_corpus_hashes", "domain_keywords",
           "ensure_suites", "load_suite_recipe", "load_suites", "suites_dir"]
from moe_experts.routing.doc_fit import HELD_OUT_LANGUAGES, no_domain_text
from moe_experts.workspace import (
    Workspace,
    atomic_dir,
    writable,
    read_json,
    sha256_file,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

SUITES_MANIFEST = "manifest.json"
# Bumped when the builder changes what a recipe produces, so built suites are rebuilt.
SUITES_VERSION = 2

_Docs = dict[str, list[Document]]  # domain -> its test documents


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class SuiteItem:
    """One routing probe. ``expected``: expert names any of which is a correct route.

    ``host``: the expert whose document carries the text (None for synthetic
    text). ``variant``: what the item probes within its suite (mixed:
    ``host+inserted`` expert names; out_of_domain: the kind; adversarial: the
    expert whose keywords were stuffed). ``sources``: ids of the corpus
    documents the text came from.
    """

    id: str
    suite: str
    text: str
    expected: tuple[str, ...]
    host: str | None
    note: str
    variant: str = ""
    keywords: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> SuiteItem:
        row = json.loads(line)
        for key in ("expected", "keywords", "sources"):
            row[key] = tuple(row.get(key, ()))
        return cls(**row)


# --------------------------------------------------------------------------- building


def build_suites(
    ws: Workspace, registry: ExpertRegistry, recipe: SuiteRecipe, *, corpus_hashes: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
) -> dict[str, list[SuiteItem]]:
    """Build every suite in memory; each of ``SUITES`` is a key, empty when skipped.

    ``corpus_hashes`` (the corpora manifest's ``domains``, or ``current_corpus_hashes``)
    makes the build refuse split files whose content differs from them; what the
    build had to skip or shorten is appended to ``notes``.
    """
    fallback = _fallback(registry)
    if corpus_hashes is not None:
        _check_hashes(ws, registry, corpus_hashes)
    test = {c.domain: _test_documents(ws, c.domain, c.name) for c in registry.cards}
    found: list[str] = []
    suites = {
        "mixed": _mixed(registry, recipe, test, found),
        "out_of_domain": _out_of_domain(registry, recipe, test, fallback.name, found),
        "adversarial": _adversarial(ws, registry, recipe, test, found),
        "steering": _steering(registry, recipe, test, fallback.name),
    }
    for note in found:
        logger.warning("routing suites: %s", note)
    logger.info("routing suites: %s", ", ".join(f"{k} {len(v)}" for k, v in suites.items()))
    if notes is not None:
        notes.extend(found)
    return suites


def _fallback(registry: ExpertRegistry) -> ExpertCard:
    fallbacks = [c for c in registry.cards if c.fallback]
    if len(fallbacks) != 1:
        raise ConfigError(
            f"{registry.source_dir}: the routing suites need exactly one card with fallback: true "
            f"(found {len(fallbacks)})",
            hint="set fallback: true on the general-purpose expert's card only",
        )
    return fallbacks[0]


def _test_documents(ws: Workspace, domain: str, expert: str) -> list[Document]:
    docs = list(iter_documents(ws, domain, "test"))
    if not docs:
        raise DataError(
            f"domain '{domain}' has no documents in its test split ({corpora_dir(ws) / domain / 'test.jsonl'}); "
            "the routing suites are built from test documents only",
            hint=f"add sources to experts/{expert}.yaml (or raise data.test_fraction in the preset), "
            "then run `moe-experts data build --force`",
        )
    return docs


def _ordered(docs: list[Document], salt: str) -> list[Document]:
    return sorted(docs, key=lambda d: (unit_hash(d.text, salt), d.id, d.text))


# --------------------------------------------------------------------------- suites


def _mixed(registry: ExpertRegistry, recipe: SuiteRecipe, test: _Docs, notes: list[str]) -> list[SuiteItem]:
    n = recipe.mixed.items_per_pair
    if n == 0:
        return []
    if len(registry.cards) < 2:
        notes.append("mixed suite skipped: it needs at least two domains")
        return []
    items: list[SuiteItem] = []
    short: list[str] = []
    for host_card in registry.cards:
        for guest_card in registry.cards:
            if guest_card is not host_card:
                pair = _mixed_pair(host_card, guest_card, recipe, test)
                items.extend(pair)
                if len(pair) < n:
                    short.append(f"{host_card.domain}>{guest_card.domain} {len(pair)}")
    if short:
        notes.append(
            f"mixed suite: fewer than {n} items for host>inserted pairs {', '.join(short)} (too few test documents "
            f"of at least mixed.min_host_chars); add corpus sources, raise data.test_fraction, or lower "
            f"mixed.min_host_chars in eval/suites.yaml"
        )
    return items


def _mixed_pair(host_card: ExpertCard, guest_card: ExpertCard, recipe: SuiteRecipe, test: _Docs) -> list[SuiteItem]:
    cfg = recipe.mixed
    a, b = host_card.domain, guest_card.domain
    tag = f"{recipe.seed}/mixed/{a}/{b}"
    rng = random.Random(tag)
    hosts = [d for d in _ordered(test[a], tag + "/host") if len(d.text) >= cfg.min_host_chars]
    guests = _ordered(test[b], tag + "/passage")
    g = 0  # passages cycle through B's documents when B has fewer than A
    items: list[SuiteItem] = []
    for host in hosts:
        if len(items) == cfg.items_per_pair:
            break
        passage = None
        for _ in range(len(guests)):
            guest, g = guests[g % len(guests)], g + 1
            passage = st.passage(
                guest.text, rng, min_chars=cfg.min_passage_chars, max_chars=cfg.max_passage_chars,
                max_units=cfg.max_passage_units,
            )
            if passage is not None:
                break
        if passage is None:
            break  # no document of B has a passage within the bounds
        body = st.trim(host.text, min(cfg.max_host_chars, recipe.max_item_chars - len(passage) - 4))
        cut = st.split_point(body, rng)
        if len(body) < cfg.min_host_chars or cut is None:
            continue
        items.append(
            SuiteItem(
                id=f"mixed/{host_card.name}+{guest_card.name}/{len(items)}",
                suite="mixed",
                text=st.splice(body, cut, passage),
                expected=(host_card.name, guest_card.name),
                host=host_card.name,
                note=f"{b} passage ({len(passage)} chars) inside a {a} document",
                variant=f"{host_card.name}+{guest_card.name}",
                sources=(host.id, guest.id),
            )
        )
    return items


def _out_of_domain(
    registry: ExpertRegistry, recipe: SuiteRecipe, test: _Docs, fallback: str, notes: list[str]
) -> list[SuiteItem]:
    cfg = recipe.out_of_domain
    if cfg.items_per_kind == 0 or not cfg.kinds:
        return []
    domains = [c.domain for c in registry.cards]
    pools = {
        d: st.word_pool(doc.text for doc in _ordered(test[d], f"{recipe.seed}/out_of_domain/words/{d}"))
        for d in domains
    }
    items: list[SuiteItem] = []
    for kind in cfg.kinds:
        rng = random.Random(f"{recipe.seed}/out_of_domain/{kind}")
        for i in range(cfg.items_per_kind):
            n_words = rng.randint(cfg.min_words, cfg.max_words)
            domain = domains[i % len(domains)]
            words = st.word_run(pools[domain], n_words, rng)
            if kind == "shuffled_words":
                text = st.sentences([st.shuffle_letters(w.lower(), rng) for w in words], rng)
                note = f"synthetic: {len(words)} words of {domain} test documents, letters shuffled"
            elif kind == "number_table":
                text, what = st.number_table(n_words, rng)
                note = f"synthetic: {what}"
            elif kind == "foreign_script":
                script = st.SCRIPTS[i % len(st.SCRIPTS)]
                text = st.foreign_script(script, [len(w) for w in words], rng)
                note = f"synthetic: {len(words)} words of random {script} letters"
            else:  # the router's own no-domain kinds, with languages it never learned from
                text = no_domain_text(kind, words, rng, languages=HELD_OUT_LANGUAGES)
                note = f"synthetic: {kind.replace('_', ' ')} ({len(text)} chars)"
            items.append(
                SuiteItem(
                    id=f"out_of_domain/{kind}/{i}",
                    suite="out_of_domain",
                    text=st.trim(text, recipe.max_item_chars),
                    expected=(fallback,),
                    host=None,
                    note=note,
                    variant=kind,
                )
            )
    return items


def _steering(registry: ExpertRegistry, recipe: SuiteRecipe, test: _Docs, fallback: str) -> list[SuiteItem]:
    cfg = recipe.steering
    items: list[SuiteItem] = []
    for a in registry.cards:
        for b in registry.cards:
            if b is a or b.name == fallback:
                continue
            tag = f"{recipe.seed}/steering/{a.domain}/{b.domain}"
            made = 0
            for host in _ordered(test[a.domain], tag):
                if made == cfg.items_per_pair:
                    break
                body = st.trim(host.text, cfg.max_host_chars).strip()
                if len(body.split()) < cfg.min_host_words:
                    continue
                instruction = cfg.instructions[made % len(cfg.instructions)].format(b=b.domain)
                before = made % 2 == 0
                items.append(SuiteItem(
                    id=f"steering/{a.name}>{b.name}/{made}", suite="steering",
                    text=f"{instruction}\n{body}" if before else f"{body}\n{instruction}",
                    expected=tuple(dict.fromkeys((a.name, fallback))), host=a.name,
                    note=f"{a.domain} document with an instruction naming {b.domain} {'before' if before else 'after'} it",
                    variant=f"toward {b.name}", keywords=(instruction,), sources=(host.id,),
                ))
                made += 1
    return items


def domain_keywords(ws: Workspace, registry: ExpertRegistry, recipe: SuiteRecipe) -> dict[str, list[str]]:
    """Each domain's most distinctive train-split words, best first (see the module docstring)."""
    cfg = recipe.adversarial
    counts: dict[str, Counter[str]] = {}
    for card in registry.cards:
        docs = list(iter_documents(ws, card.domain, "train"))
        if cfg.vocabulary_documents_per_domain is not None:
            docs = _ordered(docs, "suites/vocabulary")[: cfg.vocabulary_documents_per_domain]
        counts[card.domain] = st.keyword_counts((d.text for d in docs), cfg.min_keyword_length)
    return st.distinctive_words(counts, top=cfg.top_keywords, min_count=cfg.min_keyword_count)


def _adversarial(
    ws: Workspace, registry: ExpertRegistry, recipe: SuiteRecipe, test: _Docs, notes: list[str]
) -> list[SuiteItem]:
    cfg = recipe.adversarial
    fallback = _fallback(registry)
    specialists = [c for c in registry.cards if c is not fallback]
    if cfg.items_per_domain == 0:
        return []
    if not specialists:
        notes.append("adversarial suite skipped: there is no expert besides the fallback")
        return []
    keywords = domain_keywords(ws, registry, recipe)
    items: list[SuiteItem] = []
    short: list[str] = []
    for card in specialists:
        vocab = keywords[card.domain]
        if len(vocab) < cfg.keywords_per_item:
            notes.append(
                f"adversarial suite: no items for {card.domain}: only {len(vocab)} of its train-split words are "
                f"distinctive and seen adversarial.min_keyword_count ({cfg.min_keyword_count}) times; "
                f"{cfg.keywords_per_item} are needed"
            )
            continue
        tag = f"{recipe.seed}/adversarial/{card.domain}"
        rng = random.Random(tag)
        made = 0
        for host in _ordered(test[fallback.domain], tag + "/host"):
            if made == cfg.items_per_domain:
                break
            body = st.trim(host.text, cfg.max_host_chars)
            if len(body.split()) < cfg.min_host_words:
                continue
            stuffed = rng.sample(vocab, cfg.keywords_per_item)
            items.append(
                SuiteItem(
                    id=f"adversarial/{card.name}/{made}",
                    suite="adversarial",
                    text=st.stuff(body, stuffed, rng),
                    expected=(fallback.name,),
                    host=fallback.name,
                    note=f"{fallback.domain} document with {card.domain} keywords stuffed in: {', '.join(stuffed)}",
                    variant=card.name,
                    keywords=tuple(stuffed),
                    sources=(host.id,),
                )
            )
            made += 1
        if made < cfg.items_per_domain:
            short.append(f"{card.domain} {made}")
    if short:
        notes.append(
            f"adversarial suite: fewer than {cfg.items_per_domain} items for {', '.join(short)} (too few "
            f"{fallback.domain} test documents of at least adversarial.min_host_words words)"
        )
    return items


# --------------------------------------------------------------------------- on disk


def suites_dir(ws: Workspace) -> Path:
    return ws.suites_dir


def current_corpus_hashes(ws: Workspace, registry: ExpertRegistry) -> dict[str, dict[str, str]]:
    """sha256 of each domain's test split (the text) and train split (the keyword vocabulary)."""
    out: dict[str, dict[str, str]] = {}
    for card in registry.cards:
        out[card.domain] = {}
        for split in ("test", "train"):
            path = corpora_dir(ws) / card.domain / f"{split}.jsonl"
            if not path.exists():
                raise MissingArtifactError(
                    f"no {split} split for domain '{card.domain}' ({path})", hint="run `moe-experts data build`"
                )
            out[card.domain][split] = sha256_file(path)
    return out


def _check_hashes(ws: Workspace, registry: ExpertRegistry, expected: Mapping[str, Any]) -> None:
    current = current_corpus_hashes(ws, registry)
    for domain, splits in current.items():
        want = expected.get(domain)
        want = {"test": want} if isinstance(want, str) else (want or {})
        for split, digest in splits.items():
            if split in want and want[split] != digest:
                raise StaleArtifactError(
                    f"corpora/{domain}/{split}.jsonl differs from the corpus hashes the suites were asked to use",
                    hint="rebuild what was built from the old corpora, or run `moe-experts data build --force`",
                )


def _inputs(registry: ExpertRegistry, recipe: SuiteRecipe, hashes: dict[str, Any]) -> dict[str, Any]:
    return {
        "suites_version": SUITES_VERSION,
        "recipe_fingerprint": recipe.fingerprint(),
        "corpus_hashes": hashes,
        "experts": {c.name: c.domain for c in registry.cards},
        "fallback": _fallback(registry).name,
    }


def ensure_suites(
    ws: Workspace, registry: ExpertRegistry, recipe: SuiteRecipe, *, force: bool = False
) -> dict[str, list[SuiteItem]]:
    """The suites of ``<workspace>/eval/suites/``, (re)built when missing or built from other inputs."""
    folder = suites_dir(ws)
    inputs = _inputs(registry, recipe, current_corpus_hashes(ws, registry))
    if not force and (folder / SUITES_MANIFEST).exists():
        try:
            built = read_json(folder / SUITES_MANIFEST)
            if all(built.get(k) == v for k, v in inputs.items()):
                logger.info("routing suites: up to date, reusing %s", folder)
                return load_suites(folder)
            changed = [k for k, v in inputs.items() if built.get(k) != v]
            logger.info("routing suites: rebuilding (%s changed)", ", ".join(changed))
        except (WorkspaceError, ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.warning("routing suites: rebuilding unreadable %s (%s)", folder, exc)
    notes: list[str] = []
    # built from exactly the corpus files the manifest records (refused if one changed meanwhile)
    suites = build_suites(ws, registry, recipe, corpus_hashes=inputs["corpus_hashes"], notes=notes)
    if not writable(folder, ws):
        logger.warning("routing suites: the workspace is read-only; built for this run, not cached in %s", folder)
        return suites
    with atomic_dir(folder) as tmp:
        for name, items in suites.items():
            (tmp / f"{name}.jsonl").write_text("".join(i.to_json() + "\n" for i in items), encoding="utf-8")
        write_json_atomic(
            tmp / SUITES_MANIFEST,
            {
                **inputs,
                "seed": recipe.seed,
                "recipe": recipe.model_dump(mode="json"),
                "counts": {name: len(items) for name, items in suites.items()},
                "notes": notes,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "moe_experts_version": __version__,
            },
        )
    return suites


def load_suites(folder: Path) -> dict[str, list[SuiteItem]]:
    """Suites written by ``ensure_suites``: every name of ``SUITES`` is a key."""
    if not (folder / SUITES_MANIFEST).exists():
        raise MissingArtifactError(
            f"routing suites are not built yet ({folder} has no {SUITES_MANIFEST})", hint="run `moe-experts eval`"
        )
    out: dict[str, list[SuiteItem]] = {}
    for name in SUITES:
        path = folder / f"{name}.jsonl"
        try:
            with path.open(encoding="utf-8") as f:
                out[name] = [SuiteItem.from_json(line) for line in f if line.strip()]
        except (OSError, ValueError, TypeError) as exc:
            raise WorkspaceError(
                f"routing suite {path} is unreadable or corrupted: {exc}",
                hint="run `moe-experts eval` again; it rebuilds the suites when they do not load",
            ) from exc
    return out
