"""Routing suites: deterministic, built from test documents only, right expectations, cached on disk.

The workspace here is written by hand (corpora jsonl files in the layout
``iter_documents`` reads) from four synthetic domains with disjoint
vocabularies, so "text from both domains" and "specialist keywords" can be
checked word by word without building or training anything.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moe_experts.config import ExpertCard, ExpertRegistry
from moe_experts.data.split import doc_id
from moe_experts.errors import (
    ConfigError,
    DataError,
    MissingArtifactError,
    StaleArtifactError,
)
from moe_experts.evaluation import suites as suites_mod
from moe_experts.routing.doc_fit import FIT_LANGUAGES, HELD_OUT_LANGUAGES
from moe_experts.evaluation.suites import (
    SUITES,
    SuiteItem,
    SuiteRecipe,
    build_suites,
    current_corpus_hashes,
    domain_keywords,
    ensure_suites,
    load_suite_recipe,
    load_suites,
    suites_dir,
)
from moe_experts.workspace import Workspace
from tests.conftest import REPO, card

# Disjoint vocabularies: a word tells which domain a piece of text came from.
VOCAB = {
    "code": ["buffer", "socket", "parser", "iterator", "callback", "kwargs", "handler", "stream"],
    "general": ["river", "garden", "teacher", "window", "mountain", "harbor", "forest", "lantern"],
    "law": ["licensee", "licensor", "warranty", "indemnify", "jurisdiction", "sublicense", "covenant", "statute"],
    "medicine": ["syndrome", "hypoplasia", "cardiac", "renal", "seizures", "lesion", "fibrosis", "anemia"],
}
EXPERT = {"code": "code", "general": "general", "law": "legal", "medicine": "medicine"}  # law's expert is 'legal'


def _doc(domain: str, rng: random.Random) -> str:
    w = VOCAB[domain]
    if domain == "code":
        funcs = []
        for _ in range(rng.randint(3, 5)):
            a, b, c = rng.sample(w, 3)
            funcs.append(
                f"def read_{a}({b}, {c}):\n    \"\"\"Return the {a} of the {b}.\"\"\"\n"
                f"    result = {b}.{c}_{a}()\n    if result is None:\n"
                f"        raise ValueError(\"no {a}\")\n    return result"
            )
        return "\n\n".join(funcs)
    if domain == "law":
        paras = []
        for _ in range(rng.randint(3, 4)):
            paras.append(
                " ".join(
                    f"The {rng.choice(w)} shall not {rng.choice(w)} any {rng.choice(w)} under this {rng.choice(w)}."
                    for _ in range(rng.randint(2, 3))
                )
            )
        return "\n\n".join(paras)
    # medicine and general: one paragraph of sentences
    return " ".join(
        f"The {rng.choice(w)} and the {rng.choice(w)} were seen with {rng.choice(w)} near {rng.choice(w)}."
        for _ in range(rng.randint(6, 10))
    )


def write_corpora(root: Path, n_test: int = 30, n_train: int = 40, seed: int = 0) -> Workspace:
    """corpora/<domain>/{train,val,test}.jsonl rows (id, text, source, ref), as a corpus build writes them."""
    ws = Workspace(root)
    rng = random.Random(seed)
    for domain in VOCAB:
        folder = root / "corpora" / domain
        folder.mkdir(parents=True)
        for split, n in (("train", n_train), ("val", 5), ("test", n_test)):
            texts = list(dict.fromkeys(_doc(domain, rng) for _ in range(n)))
            rows = [{"id": doc_id(t), "text": t, "source": "synthetic", "ref": f"{domain}:{i}"} for i, t in enumerate(texts)]
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return ws


def make_registry(domains=("code", "general", "law", "medicine"), fallback: str | None = "general") -> ExpertRegistry:
    cards = []
    for domain in domains:
        data = card(EXPERT[domain], [{"kind": "python_stdlib"}], fallback=domain == fallback)
        data["domain"] = domain
        cards.append(ExpertCard.model_validate(data))
    return ExpertRegistry(cards=tuple(sorted(cards, key=lambda c: c.name)), source_dir="experts")


def docs_of(ws: Workspace, domain: str, split: str = "test") -> dict[str, str]:
    rows = (json.loads(line) for line in (ws.root / "corpora" / domain / f"{split}.jsonl").open())
    return {r["id"]: r["text"] for r in rows}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return write_corpora(tmp_path_factory.mktemp("suites") / "ws")


@pytest.fixture(scope="module")
def registry() -> ExpertRegistry:
    return make_registry()


@pytest.fixture(scope="module")
def built(ws: Workspace, registry: ExpertRegistry) -> dict[str, list[SuiteItem]]:
    return build_suites(ws, registry, SuiteRecipe())


def _dump(suites: dict[str, list[SuiteItem]]) -> str:
    return "\n".join(item.to_json() for name in SUITES for item in suites[name])


# --------------------------------------------------------------------------- recipe


def test_shipped_recipe_equals_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert load_suite_recipe(REPO / "eval" / "suites.yaml") == SuiteRecipe()
    # the library never reads a recipe from the current folder: None is the built-in defaults
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "suites.yaml").write_text("seed: 99\n")
    monkeypatch.chdir(tmp_path)
    assert load_suite_recipe(None) == SuiteRecipe()


def test_bad_recipe_is_refused_by_file_and_field(tmp_path: Path):
    path = tmp_path / "suites.yaml"
    path.write_text("seed: 3\nmixed:\n  items_per_pair: -1\n  colour: red\n")
    with pytest.raises(ConfigError) as err:
        load_suite_recipe(path)
    assert str(path) in str(err.value) and "mixed.items_per_pair" in str(err.value) and "mixed.colour" in str(err.value)
    path.write_text("mixed: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_suite_recipe(path)
    path.write_text("adversarial:\n  keywords_per_item: 9\n  top_keywords: 5\n")
    with pytest.raises(ConfigError, match="keywords_per_item"):
        load_suite_recipe(path)


# --------------------------------------------------------------------------- determinism


def test_counts_with_the_default_recipe(built):
    # 4 domains: 12 ordered pairs x 5, 3 kinds x 20, 3 specialists x 20
    assert {k: len(v) for k, v in built.items()} == {"mixed": 60, "out_of_domain": 140, "adversarial": 60,
                                                      "steering": 45}


def test_suites_are_deterministic_and_depend_on_the_seed(ws, registry, built):
    assert _dump(build_suites(ws, registry, SuiteRecipe())) == _dump(built)
    other = build_suites(ws, registry, SuiteRecipe(seed=1))
    assert {k: len(v) for k, v in other.items()} == {k: len(v) for k, v in built.items()}
    for name in SUITES:  # every suite changes, not only one of them
        assert [i.text for i in other[name]] != [i.text for i in built[name]]


def test_suites_do_not_depend_on_document_order(tmp_path: Path, registry, built):
    shuffled = write_corpora(tmp_path / "ws")
    for path in sorted((shuffled.root / "corpora").glob("*/*.jsonl")):
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(reversed(lines)))
    assert _dump(build_suites(shuffled, registry, SuiteRecipe())) == _dump(built)


def test_suites_are_the_same_in_another_process(tmp_path: Path, ws, registry, built):
    (tmp_path / "registry.json").write_text(registry.model_dump_json())
    script = (
        "import sys; from pathlib import Path\n"
        "from moe_experts.config import ExpertRegistry\n"
        "from moe_experts.evaluation.suites import SUITES, SuiteRecipe, build_suites\n"
        "from moe_experts.workspace import Workspace\n"
        "reg = ExpertRegistry.model_validate_json(Path(sys.argv[1]).read_text())\n"
        "s = build_suites(Workspace(Path(sys.argv[2])), reg, SuiteRecipe())\n"
        "sys.stdout.write('\\n'.join(i.to_json() for n in SUITES for i in s[n]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # set and string hashing differ from this process
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "registry.json"), str(ws.root)],
        capture_output=True, text=True, env=env, cwd=REPO, check=True,
    )
    assert out.stdout == _dump(built)


# --------------------------------------------------------------------------- content


def test_every_item_is_bounded_and_expects_registry_experts(built, registry):
    recipe = SuiteRecipe()
    ids = [item.id for name in SUITES for item in built[name]]
    assert len(ids) == len(set(ids))
    for name in SUITES:
        for item in built[name]:
            assert item.suite == name
            assert 0 < len(item.text.strip()) and len(item.text) <= recipe.max_item_chars
            assert item.expected and set(item.expected) <= set(registry.names)
            assert item.host is None or item.host in registry.names
    assert "legal" in {n for item in built["mixed"] for n in item.expected}  # expert names, not domain names
    for item in built["out_of_domain"] + built["adversarial"]:
        assert item.expected == ("general",)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _domains_in(text: str) -> set[str]:
    return {d for d, vocab in VOCAB.items() if _words(text) & set(vocab)}


def test_mixed_items_splice_a_passage_of_one_domain_into_the_middle_of_another(built, ws):
    domain_of = {v: k for k, v in EXPERT.items()}
    pairs = set()
    for item in built["mixed"]:
        host_expert, guest_expert = item.expected
        a, b = domain_of[host_expert], domain_of[guest_expert]
        assert item.host == host_expert and a != b
        pairs.add((a, b))
        assert _domains_in(item.text) == {a, b}
        host_text = docs_of(ws, a)[item.sources[0]]
        guest_text = docs_of(ws, b)[item.sources[1]]
        assert item.text.startswith(host_text[:20])  # the host opens the item ...
        assert _domains_in(item.text.rsplit("\n\n", 1)[-1]) == {a}  # ... and closes it
        inserted = [p for p in item.text.split("\n\n") if _domains_in(p) == {b}]
        assert inserted and all(p in guest_text for p in inserted)
        assert 100 <= len("\n\n".join(inserted)) <= 300
    assert len(pairs) == 12


def test_adversarial_items_stuff_distinctive_keywords_into_fallback_documents(built, ws, registry):
    keywords = domain_keywords(ws, registry, SuiteRecipe())
    domain_of = {v: k for k, v in EXPERT.items()}
    train_words = {d: set().union(*map(_words, docs_of(ws, d, "train").values())) for d in VOCAB}
    for domain in ("code", "law", "medicine"):  # a specialist's keywords are words of its own train split only
        others = set().union(*(train_words[d] for d in VOCAB if d != domain))
        assert len(keywords[domain]) >= 3 and set(keywords[domain]) <= train_words[domain] - others
        assert all(len(w) >= 4 and w.isalpha() for w in keywords[domain])
    stuffed_domains = set()
    for item in built["adversarial"]:
        x = domain_of[item.variant]
        stuffed_domains.add(x)
        assert item.host == "general" and len(item.keywords) == 3
        assert set(item.keywords) <= set(keywords[x])
        tokens = item.text.split()
        assert all(kw in tokens for kw in item.keywords)
        assert all(kw in item.note for kw in item.keywords)
        host = docs_of(ws, "general")[item.sources[0]]
        # removing the keywords gives the host document back (a prefix of it, when it was cut)
        assert " ".join(host.split()).startswith(" ".join(t for t in tokens if t not in item.keywords))
    assert stuffed_domains == {"code", "law", "medicine"}


def test_out_of_domain_items_are_synthetic(built, ws):
    corpus_words = set().union(*(_words(t) for d in VOCAB for t in docs_of(ws, d).values()))
    kinds = {}
    for item in built["out_of_domain"]:
        assert item.host is None and item.note.startswith("synthetic")
        kinds.setdefault(item.variant, []).append(item.text)
    assert set(kinds) == {"shuffled_words", "number_table", "foreign_script", "emoji", "repeated_char",
                          "random_chars", "other_language"}
    assert all(len(v) == 20 for v in kinds.values())
    for text in kinds["number_table"]:
        assert not re.search(r"[g-wyzG-Z]", text)  # digits, signs, hex
    for text in kinds["foreign_script"]:
        assert not re.search(r"[A-Za-z]", text)
    scripts = {("greek" if re.search("[α-ω]", t) else "cyrillic" if re.search("[а-я]", t) else "cjk")
               for t in kinds["foreign_script"]}
    assert scripts == {"greek", "cyrillic", "cjk"}
    for text in kinds["shuffled_words"]:
        words = _words(text)
        assert len(words & corpus_words) <= len(words) // 4  # gibberish, not the corpus' words
    for text in kinds["emoji"]:
        assert all(ord(c) >= 0x2600 or c == " " for c in text)
    for text in kinds["repeated_char"]:  # one unit, repeated
        units = set(re.split(r"[ \n]", text)) - {""}
        assert len(units) == 1 or len(set(text.replace(" ", "").replace("\n", ""))) == 1
    # other languages: only the held-out word lists, which the router never learns from
    held_out = set(" ".join(HELD_OUT_LANGUAGES.values()).split())
    fit = set(" ".join(FIT_LANGUAGES.values()).split())
    for text in kinds["other_language"]:
        words = set(re.findall(r"[^\W\d_]+", text.lower()))
        assert words <= held_out and not words <= fit


def test_steering_items_are_test_documents_with_an_instruction_naming_another_domain(built, ws):
    domain_of = {v: k for k, v in EXPERT.items()}
    pairs = set()
    for item in built["steering"]:
        target = item.variant.removeprefix("toward ")
        a, b = domain_of[item.host], domain_of[target]
        pairs.add((a, b))
        assert a != b and target != "general"
        assert item.expected == tuple(dict.fromkeys((item.host, "general")))  # the host, or abstaining
        (instruction,) = item.keywords
        assert b in instruction
        lines = item.text.split("\n")
        assert instruction in (lines[0], lines[-1])
        body = item.text.replace(instruction, "").strip()
        host = docs_of(ws, a)[item.sources[0]]
        assert " ".join(host.split()).startswith(" ".join(body.split()))
    assert len(pairs) == 9  # every domain toward every specialist but itself


# --------------------------------------------------------------------------- on disk


def test_ensure_suites_writes_reuses_and_rebuilds(tmp_path: Path, registry, built, monkeypatch):
    ws = write_corpora(tmp_path / "ws")
    first = ensure_suites(ws, registry, SuiteRecipe())
    assert _dump(first) == _dump(built)
    folder = suites_dir(ws)
    assert sorted(p.name for p in folder.iterdir()) == ["adversarial.jsonl", "manifest.json", "mixed.jsonl",
                                                        "out_of_domain.jsonl", "steering.jsonl"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"] == {"mixed": 60, "out_of_domain": 140, "adversarial": 60, "steering": 45}
    assert manifest["seed"] == 0 and manifest["recipe_fingerprint"] == SuiteRecipe().fingerprint()
    assert manifest["corpus_hashes"] == current_corpus_hashes(ws, registry)
    assert _dump(load_suites(folder)) == _dump(built)  # round trip

    real_build = suites_mod.build_suites

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt although nothing changed")

    monkeypatch.setattr(suites_mod, "build_suites", refuse)
    assert _dump(ensure_suites(ws, registry, SuiteRecipe())) == _dump(built)

    calls = []
    monkeypatch.setattr(suites_mod, "build_suites", lambda *a, **kw: calls.append(1) or real_build(*a, **kw))
    reseeded = ensure_suites(ws, registry, SuiteRecipe(seed=7))  # recipe changed
    assert calls and _dump(reseeded) != _dump(built)
    assert json.loads((folder / "manifest.json").read_text())["seed"] == 7

    calls.clear()
    with (ws.root / "corpora" / "general" / "test.jsonl").open("a") as f:  # corpora changed
        f.write(json.dumps({"id": "x", "text": "A new general text about a river.", "source": "s", "ref": "r"}) + "\n")
    ensure_suites(ws, registry, SuiteRecipe(seed=7))
    assert calls

    calls.clear()
    (folder / "mixed.jsonl").write_text("{not json\n")  # a damaged suite is rebuilt, not trusted
    assert len(ensure_suites(ws, registry, SuiteRecipe(seed=7))["mixed"]) == 60
    assert calls
    assert not list(folder.parent.glob(".tmp-*"))


def test_load_suites_without_a_build_says_what_to_run(tmp_path: Path):
    with pytest.raises(MissingArtifactError, match="moe-experts eval"):
        load_suites(tmp_path / "nothing")


# --------------------------------------------------------------------------- refusals


def test_an_empty_test_split_is_refused_naming_the_domain(tmp_path: Path, registry):
    ws = write_corpora(tmp_path / "ws", n_test=3, n_train=10)
    (ws.root / "corpora" / "law" / "test.jsonl").write_text("")
    with pytest.raises(DataError) as err:
        build_suites(ws, registry, SuiteRecipe())
    assert "domain 'law'" in err.value.message and "test split" in err.value.message
    assert "experts/legal.yaml" in err.value.hint and "data build" in err.value.hint


def test_a_registry_without_fallback_is_refused(ws):
    with pytest.raises(ConfigError, match="fallback"):
        build_suites(ws, make_registry(fallback=None), SuiteRecipe())


def test_a_single_domain_skips_mixed_and_adversarial_with_a_reason(ws, caplog):
    with caplog.at_level("WARNING", logger="moe_experts.evaluation.suites"):
        one = build_suites(ws, make_registry(domains=("general",)), SuiteRecipe())
    assert one["mixed"] == [] and one["adversarial"] == [] and one["steering"] == [] and len(one["out_of_domain"]) == 140
    assert "mixed suite skipped" in caplog.text and "adversarial suite skipped" in caplog.text


def test_corpus_hashes_that_differ_are_refused(ws, registry):
    hashes = current_corpus_hashes(ws, registry)
    assert build_suites(ws, registry, SuiteRecipe(), corpus_hashes=hashes)["mixed"]
    stale = {**hashes, "medicine": {**hashes["medicine"], "test": "0" * 64}}
    with pytest.raises(StaleArtifactError, match="medicine/test.jsonl"):
        build_suites(ws, registry, SuiteRecipe(), corpus_hashes=stale)
