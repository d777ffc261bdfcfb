"""Growing and pruning the expert set (``moe-experts experts add / remove``) on the micro preset.

Every test works on its own copy of a workspace and of its cards folder: ``grow`` copies the session's routed
micro workspace (four experts); ``grown`` copies the module's ``grown_once``, to which ``add_expert`` added
the unix expert once, so that the tests of what follows an add do not each train it again. ``grown_once``
itself is only read, never written, so the tests do not depend on their order.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import card

_CMDS = "ls cp mv grep find tar ssh rsync chmod chown mount kill ps sed awk".split()
_WORDS = "file directory recursive verbose output mode link symbolic device archive pattern owner group signal".split()


def unix_documents(n: int, seed: int = 5) -> list[str]:
    """Deterministic manual-page-like documents: a domain no built expert has seen."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        c = rng.choice(_CMDS)
        lines = [f"{c.upper()}(1) User Commands", f"NAME {c} - {rng.choice(_WORDS)} {rng.choice(_WORDS)} utility",
                 f"SYNOPSIS {c} [OPTION]... [FILE]..."]
        for _ in range(rng.randint(3, 6)):
            w = rng.choice(_WORDS)
            lines.append(f"-{w[0]}, --{w} {rng.choice(_WORDS)} the {rng.choice(_WORDS)} of each {rng.choice(_WORDS)}")
        docs.append("\n".join(lines))
    return docs


def write_card(folder: Path, name: str, sources: list[dict], **fields) -> Path:
    data = card(name, sources)
    data.update(fields)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _copy_setup(setup, dest: Path):
    """``setup`` over copies of its workspace and cards folder, made under ``dest``."""
    from moe_experts.config import load_registry

    cards = dest / "cards"
    shutil.copytree(setup.registry.source_dir, cards)
    ws = dest / "ws"
    shutil.copytree(setup.workspace.root, ws)
    return replace(setup, workspace=replace(setup.workspace, root=ws), registry=load_registry(cards))


def _unix_card(folder: Path) -> Path:
    """The unix card (a local jsonl of manual-page-like documents), written in ``folder`` outside any cards folder."""
    text = folder / "unix.jsonl"
    text.write_text("".join(json.dumps({"text": t}) + "\n" for t in unix_documents(260)))
    return write_card(folder, "unix", [{"kind": "local", "path": str(text), "format": "jsonl"}])


@pytest.fixture
def grow(routed, tmp_path):
    """(setup over a copy of the routed workspace and cards, router recipe, the new card's path outside the cards)."""
    from moe_experts.recipes import load_recipe

    setup, _, recipe_path = routed
    return _copy_setup(setup, tmp_path), load_recipe(recipe_path), _unix_card(tmp_path)


@dataclass(frozen=True)
class Grown:
    setup: object  # over the grown workspace, its cards folder read again (five experts)
    recipe: object
    new_card: Path  # the unix card as given to the add, outside the cards folder
    result: object  # the add's AddResult
    before: dict[str, str]  # _old_files of the routed copy before the add
    router_before: dict[str, str]  # _live_router_files of the routed copy before the add


@pytest.fixture(scope="module")
def grown_once(routed, tmp_path_factory) -> Grown:
    """A copy of the routed workspace to which ``add_expert`` added unix (seed init) once for the module.

    Read it, never write it: a test that changes the grown set takes ``grown`` (its own copy) instead.
    """
    from moe_experts.lifecycle import add_expert
    from moe_experts.recipes import load_recipe

    setup, _, recipe_path = routed
    root = tmp_path_factory.mktemp("grown")
    setup = _copy_setup(setup, root)
    recipe, new_card = load_recipe(recipe_path), _unix_card(root)
    before, router_before = _old_files(setup), _live_router_files(setup)
    result = add_expert(setup, new_card, recipe=recipe)
    return Grown(_reload(setup), recipe, new_card, result, before, router_before)


@pytest.fixture
def grown(grown_once, tmp_path) -> Grown:
    """``grown_once`` with the setup over this test's own copy of its workspace and cards folder."""
    return replace(grown_once, setup=_copy_setup(grown_once.setup, tmp_path))


def file_hashes(root: Path, folders: list[str]) -> dict[str, str]:
    out = {}
    for name in folders:
        for path in sorted((root / name).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _old_files(setup) -> dict[str, str]:
    folders = ["models", "tokenizer", "tokens", *[f"corpora/{d}" for d in setup.registry.domains]]
    return file_hashes(setup.workspace.root, folders)


def _live_router_files(setup) -> dict[str, str]:
    """SHA-256 of the live document router's index, classifier and documents (router.json holds timings)."""
    from moe_experts.routing.doc_router import live_dir, router_dir

    live = live_dir(router_dir(setup.workspace.root))
    return {name: hashlib.sha256((live / name).read_bytes()).hexdigest()
            for name in ("index.faiss", "classifier.safetensors", "documents.jsonl")}


def _reload(setup):
    from moe_experts.config import load_registry

    return replace(setup, registry=load_registry(Path(setup.registry.source_dir)))


def test_add_leaves_the_others_byte_for_byte(grown_once):
    from moe_experts.data.build import corpora_state
    from moe_experts.routing.doc_router import DocRouter, router_dir

    grown, result, new_card = grown_once.setup, grown_once.result, grown_once.new_card
    assert grown.registry.names == ["code", "general", "law", "medicine", "unix"]
    assert (Path(grown.registry.source_dir) / "unix.yaml").read_text() == new_card.read_text()
    before = grown_once.before
    new_files = {k: v for k, v in _old_files(grown).items() if k in before}
    assert new_files == before  # every file of the seed, the experts, the generalist, tokenizer and old corpora
    assert result.trained and result.init == {"method": "seed", "from": {"seed": result.untouched["seed"]}}
    assert (grown.workspace.model_dir("unix") / "model.safetensors").exists()
    assert corpora_state(grown.workspace, grown.registry, grown.preset.data).state == "current"
    assert result.documents["train"] > 100 and result.router_accuracy >= 0.8
    assert "has not seen unix" in result.generalist
    router = DocRouter.load(router_dir(grown.workspace.root), grown.registry)
    decision = router.route(["LS(1) User Commands\nNAME ls - list directory contents\n-r, --recursive list subdirectories"])[0][0]
    assert decision.predicted == "unix"


def test_an_added_expert_is_evaluated_and_remove_restores_the_router(grown):
    from moe_experts.evaluation.options import EvalOptions
    from moe_experts.evaluation.runner import run_eval
    from moe_experts.lifecycle import add_expert, remove_expert

    grown_setup, recipe = grown.setup, grown.recipe
    report = run_eval(grown_setup, EvalOptions(max_docs=4, suites=False, speed_prompts=0, latency_requests=0))
    assert "expert:unix" in [s["name"] for s in report["systems"]] and "unix" in report["domains"]
    assert any("not on unix" in note for note in report["notes"])

    removed = remove_expert(grown_setup, "unix", recipe=recipe)
    pruned = _reload(grown_setup)
    assert pruned.registry.names == ["code", "general", "law", "medicine"]
    assert removed.card == Path(grown_setup.registry.source_dir) / "removed" / "unix.yaml" and removed.card.exists()
    # the same cards, recipe and cached embeddings: the router is the one from before the add, bar its timings
    assert _live_router_files(pruned) == grown.router_before
    assert (pruned.workspace.model_dir("unix") / "model.safetensors").exists()  # kept without --delete

    again = add_expert(pruned, removed.card, recipe=recipe)  # adding it back reuses what was built
    assert not again.trained and not removed.card.exists()
    assert _reload(pruned).registry.names[-1] == "unix"


def test_average_and_nearest_initialise_from_the_router_posterior(grow):
    from moe_experts.lifecycle import add_expert, router_posterior
    from moe_experts.modeling.checkpoints import load_checkpoint
    from moe_experts.modeling.stages import TrainOptions, average_weights, model_manifest, tokens_seen

    setup, recipe, new_card = grow
    shutil.copy(new_card, Path(setup.registry.source_dir) / "unix.yaml")  # declared first: its corpus exists for
    from moe_experts.pipeline import ensure_corpora  # the posterior below; the add then builds the rest

    ensure_corpora(_reload(setup))
    posterior = router_posterior(_reload(setup), "unix", recipe.max_train_documents_per_domain)
    top = max(posterior, key=posterior.get)
    result = add_expert(_reload(setup), new_card, init="average", recipe=recipe)
    weights = result.init["weights"]
    assert set(weights) <= {"code", "general", "law", "medicine"} and abs(sum(weights.values()) - 1) < 1e-5
    assert weights == pytest.approx({n: p / sum(posterior.values()) for n, p in posterior.items()}, abs=1e-5)
    assert max(weights, key=weights.get) == top
    grown = _reload(setup)
    seed_tokens = tokens_seen(model_manifest(grown, "seed"))
    assert tokens_seen(model_manifest(grown, "unix")) > seed_tokens  # the averaged branches' tokens are counted

    # the average itself: one expert at weight 1 is that expert; two at one half each, their mean
    code = load_checkpoint(grown.workspace.model_dir("code")).model.state_dict()
    law = load_checkpoint(grown.workspace.model_dir("law")).model.state_dict()
    alone = average_weights(grown, {"code": 1.0})
    mixed = average_weights(grown, {"code": 0.5, "law": 0.5})
    for key in code:
        torch.testing.assert_close(alone[key], code[key].float())
        torch.testing.assert_close(mixed[key], (code[key].float() + law[key].float()) / 2)

    nearest = add_expert(grown, Path(grown.registry.source_dir) / "unix.yaml", init="nearest", recipe=recipe,
                         opts=TrainOptions(force=True))
    assert nearest.init["method"] == "nearest" and list(nearest.init["weights"]) == [top]


def _snapshot(setup) -> tuple[list[str], bytes, list[str], dict[str, str]]:
    root = setup.workspace.root
    return (sorted(p.name for p in Path(setup.registry.source_dir).iterdir()),
            (root / "corpora" / "moe_experts.json").read_bytes(),
            sorted(p.name for p in (root / "models").iterdir()),
            file_hashes(root, ["routers/doc"]))


def test_bad_cards_are_refused_with_the_fix_and_nothing_is_written(grow, tmp_path):
    from moe_experts.errors import CheckpointError, ConfigError, DataError
    from moe_experts.lifecycle import add_expert

    setup, recipe, new_card = grow
    before = _snapshot(setup)
    law_source = setup.registry.by_name("law").corpus.sources[0].model_dump(mode="json", exclude_none=True)
    text = tmp_path / "unix.jsonl"
    (tmp_path / "other").mkdir()
    cases = [
        (write_card(tmp_path, "legal", [law_source], domain="law"), ConfigError, "domain 'law' already has an expert"),
        (write_card(tmp_path / "other", "law", [{"kind": "local", "path": str(text), "format": "jsonl"}], domain="lawx"),
         ConfigError, "an expert named 'law' already exists"),
        (write_card(tmp_path, "tiny", [{"kind": "local", "path": str(text), "format": "jsonl", "limit": 5}]),
         DataError, "under its minimum"),
        (write_card(tmp_path, "copies", [law_source]), DataError, "repeats an existing domain"),
        (write_card(tmp_path, "foreign", [{"kind": "local", "path": str(text), "format": "jsonl"}],
                    model=str(tmp_path / "no-such-model")), CheckpointError, "card 'foreign': model folder .* does not exist"),
    ]
    for path, error, message in cases:
        with pytest.raises(error, match=message) as info:
            add_expert(setup, path, recipe=recipe)
        assert info.value.hint, path  # every refusal names the fix
        assert _snapshot(setup) == before, path
        assert not (setup.workspace.root / "corpora" / path.stem).exists() or path.stem == "law"


def test_an_interrupted_add_leaves_the_old_set_usable_and_resumes(grow):
    from transformers import TrainerCallback

    from moe_experts.data.build import corpora_state
    from moe_experts.errors import TrainingError
    from moe_experts.lifecycle import add_expert
    from moe_experts.modeling.stages import TrainOptions
    from moe_experts.routing.doc_router import DocRouter, router_dir

    class Kill(Exception):
        pass

    class StopAt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise Kill

    setup, recipe, new_card = grow
    before = _snapshot(setup)
    with pytest.raises(Kill):
        add_expert(setup, new_card, recipe=recipe, opts=TrainOptions(callbacks=[StopAt()]))
    cards, _, models, router = _snapshot(setup)
    assert (cards, models, router) == (before[0], before[2], before[3])  # the new corpus may stay; nothing else moved
    assert corpora_state(setup.workspace, setup.registry, setup.preset.data).state == "current"
    routed = DocRouter.load(router_dir(setup.workspace.root), setup.registry).route(["def main():\n    return 0"])
    assert routed[0][0].expert in setup.registry.names
    with pytest.raises(TrainingError, match="`resume`"):
        add_expert(setup, new_card, recipe=recipe)
    done = add_expert(setup, new_card, recipe=recipe, opts=TrainOptions(resume=True))
    assert done.trained and _reload(setup).registry.names[-1] == "unix"


def test_removing_the_fallback_needs_a_new_one(grow):
    from moe_experts.config import load_registry
    from moe_experts.errors import ConfigError
    from moe_experts.lifecycle import remove_expert
    from moe_experts.routing.doc_router import router_dir, router_manifest

    setup, recipe, _ = grow
    with pytest.raises(ConfigError, match="fallback expert") as info:
        remove_expert(setup, "general", recipe=recipe)
    assert "`fallback`" in info.value.hint
    with pytest.raises(ConfigError, match="not one of the remaining"):
        remove_expert(setup, "general", fallback="general", recipe=recipe)
    result = remove_expert(setup, "general", fallback="law", recipe=recipe, delete=True)
    registry = load_registry(Path(setup.registry.source_dir))
    assert registry.names == ["code", "law", "medicine"] and registry.fallback.name == "law"
    assert yaml.safe_load(result.card.read_text()).get("fallback", False) is False
    assert router_manifest(router_dir(setup.workspace.root))["fallback"] == "law"
    assert not setup.workspace.model_dir("general").exists() and not setup.workspace.corpus_dir("general").exists()
    assert "general" not in json.loads((setup.workspace.root / "corpora" / "moe_experts.json").read_text())["domains"]


def test_a_new_card_in_the_folder_is_added_alone_by_quickstart(grow):
    from moe_experts.data.build import corpora_state
    from moe_experts.evaluation.options import EvalOptions
    from moe_experts.modeling.stages import TrainOptions
    from moe_experts.pipeline import quickstart

    setup, recipe, new_card = grow
    before = _old_files(setup)
    shutil.copy(new_card, Path(setup.registry.source_dir) / "unix.yaml")
    grown = _reload(setup)
    assert corpora_state(grown.workspace, grown.registry, grown.preset.data).new_domains == ("unix",)
    result = quickstart(grown, TrainOptions(), recipe=recipe,
                        evaluation=EvalOptions(max_docs=2, suites=False, speed_prompts=0, latency_requests=0))
    built = {t.stage for t in result.timings if t.built}
    # no --update needed: the tokenizer, seed, the four experts and the generalist are reused as they are
    assert built == {"corpora", "expert unix", "sanity check", "document router", "evaluation report"}
    assert result.router is not None and result.router["experts"][-1] == "unix"
    assert {k: v for k, v in _old_files(setup).items() if k in before} == before


def test_an_older_workspace_can_remove_an_expert_and_delete_it_later(grow):
    from moe_experts.data.build import corpora_state
    from moe_experts.lifecycle import remove_expert
    from moe_experts.workspace import read_json, write_json_atomic

    setup, recipe, _ = grow
    top = setup.workspace.root / "corpora" / "moe_experts.json"
    legacy = {k: v for k, v in read_json(top).items() if k not in ("cards", "base_domains", "data_fingerprint", "added")}
    write_json_atomic(top, legacy)  # as written before per-domain card fingerprints
    assert corpora_state(setup.workspace, setup.registry, setup.preset.data).state == "current"
    remove_expert(setup, "law", recipe=recipe)
    pruned = _reload(setup)
    assert corpora_state(pruned.workspace, pruned.registry, pruned.preset.data).state == "current"
    assert pruned.workspace.model_dir("law").exists()
    later = remove_expert(pruned, "law", delete=True)  # its card waits in removed/: delete its files now
    assert later.deleted and not pruned.workspace.model_dir("law").exists()
    assert corpora_state(pruned.workspace, pruned.registry, pruned.preset.data).state == "current"


def test_the_token_router_is_marked_stale_when_the_set_changes(grow):
    from moe_experts.errors import StaleArtifactError
    from moe_experts.inference.ask_token import load_token_moe
    from moe_experts.pipeline import check_token_router
    from moe_experts.recipes import TokenRouterRecipe
    from moe_experts.routing.train_token import expert_set_change, token_router_dir
    from moe_experts.workspace import MANIFEST, write_json_atomic

    setup, _, new_card = grow
    folder = token_router_dir(setup.workspace.root)
    write_json_atomic(folder / MANIFEST, {"experts": ["code", "general", "law", "medicine"]})
    assert expert_set_change(setup) is None
    shutil.copy(new_card, Path(setup.registry.source_dir) / "unix.yaml")
    grown = _reload(setup)
    assert "added since: unix" in expert_set_change(grown)
    state = check_token_router(grown, False, TokenRouterRecipe())
    assert state.startswith("stale") and "--kind token --force" in state
    with pytest.raises(StaleArtifactError, match="added since: unix"):
        load_token_moe(grown)


def test_a_pretrained_expert_of_another_architecture_is_served_by_the_document_router(grow, tmp_path):
    from moe_experts.lifecycle import add_expert
    from moe_experts.pipeline import check_token_router
    from moe_experts.recipes import TokenRouterRecipe
    from moe_experts.routing.doc_router import DocRouter, router_dir
    from tests.conftest import save_user_model

    folder = save_user_model(tmp_path / "gpt2-unix", unix_documents(50), architecture="gpt2")

    setup, recipe, new_card = grow
    data = yaml.safe_load(new_card.read_text())
    data["model"] = str(folder)
    new_card.write_text(yaml.safe_dump(data))
    result = add_expert(setup, new_card, recipe=recipe)
    assert result.kind == "pretrained" and result.init is None and not result.trained
    assert not setup.workspace.model_dir("unix").exists()  # nothing trained for it
    grown = _reload(setup)
    router = DocRouter.load(router_dir(grown.workspace.root), grown.registry)
    assert "unix" in router.experts
    refused = check_token_router(grown, True, TokenRouterRecipe())
    assert refused.startswith("not rebuilt") and "GPT2LMHeadModel" in refused


def test_the_python_api_prunes_and_grows_the_set(grown):
    from moe_experts import AddResult, MoE, RemoveResult

    setup, recipe = grown.setup, grown.recipe
    moe = MoE.open(cards=setup.registry.source_dir, preset="micro", workspace=setup.workspace.root)
    unix = "LS(1) User Commands\nNAME ls - list directory contents\n-r, --recursive"
    assert moe.experts[-1] == "unix" and moe.route([unix])[0].expert == "unix"
    removed = moe.remove_expert("unix", doc_router=recipe)
    assert isinstance(removed, RemoveResult) and removed.card.exists() and "unix" not in moe.experts
    assert moe.route(["SSH(1) User Commands"])[0].expert != "unix"  # the router was refitted without it
    added = moe.add_expert(removed.card, doc_router=recipe)
    assert isinstance(added, AddResult) and moe.experts[-1] == "unix"
    assert moe.route([unix])[0].expert == "unix"


def test_cli_refusals_name_the_flag_and_exit_non_zero(grow, tmp_path):
    from tests.integration.test_cli import run_cli

    setup, _, new_card = grow
    base = ["--preset", "micro", "--cards", setup.registry.source_dir, "-w", str(setup.workspace.root)]
    law_source = setup.registry.by_name("law").corpus.sources[0].model_dump(mode="json", exclude_none=True)
    (tmp_path / "clash").mkdir()
    clash = write_card(tmp_path / "clash", "legal", [law_source], domain="law")
    refused = run_cli(*base, "experts", "add", str(clash))
    assert refused.returncode != 0 and "domain 'law' already has an expert" in refused.stderr and "fix:" in refused.stderr
    fallback = run_cli(*base, "experts", "remove", "general")
    assert fallback.returncode != 0 and "--fallback" in fallback.stderr
    listed = run_cli(*base, "experts", "list")
    assert listed.returncode == 0 and "general     general     base     trained" in listed.stdout


def test_token_router_rebuilt_on_request_with_one_more_expert_per_layer(grown):
    from moe_experts.lifecycle import add_expert, remove_expert
    from moe_experts.recipes import TokenRouterRecipe
    from moe_experts.routing.train_token import token_router_dir
    from moe_experts.workspace import read_json
    from tests.integration.test_token_router import FAST

    # unix taken out and added back: the add with `token` is the one under test, without training unix again
    removed = remove_expert(grown.setup, "unix", recipe=grown.recipe)
    setup, recipe = _reload(grown.setup), grown.recipe
    token_recipe = TokenRouterRecipe.model_validate({**FAST, "dead_expert_share": 0.0})
    result = add_expert(setup, removed.card, recipe=recipe, token=True, token_recipe=token_recipe)
    assert result.token_router.startswith("rebuilt with code, general, law, medicine, unix")
    config = read_json(token_router_dir(setup.workspace.root) / "config.json")
    assert config["num_local_experts"] == 5


def test_train_generalist_after_growth_sees_every_domain_and_matches_every_branch(grown):
    from moe_experts.modeling.generalist import train_generalists
    from moe_experts.modeling.stages import GENERALIST, TrainOptions, model_manifest

    grown = grown.setup
    old = model_manifest(grown, GENERALIST)  # the add left the generalist of the four
    assert old["domains"] == ["code", "general", "law", "medicine"]
    assert not train_generalists(grown)[0].trained  # quickstart's call: the old one stays the comparison
    built = train_generalists(grown, TrainOptions(update=True), domains=grown.registry.domains)[0]
    assert built.trained and built.manifest["domains"] == grown.registry.domains
    assert set(built.manifest["matched_to"]) == {"seed", *grown.registry.names}
    assert sum(built.manifest["matched_to"].values()) > sum(old["matched_to"].values())
    assert not train_generalists(grown)[0].trained  # and quickstart keeps the new one


def test_rebuild_builds_every_corpus_together(grown):
    from moe_experts.data.build import corpora_state
    from moe_experts.pipeline import ensure_corpora
    from moe_experts.workspace import read_json

    grown = grown.setup
    top = grown.workspace.root / "corpora" / "moe_experts.json"
    assert read_json(top)["base_domains"] == ["code", "general", "law", "medicine"]
    assert not ensure_corpora(grown)
    assert ensure_corpora(grown, rebuild=True)
    assert read_json(top)["base_domains"] == grown.registry.domains and read_json(top)["added"] == {}
    assert corpora_state(grown.workspace, grown.registry, grown.preset.data).state == "current"


def test_an_edited_card_of_an_added_domain_rebuilds_that_domain_alone(grown):
    from moe_experts.data.build import corpora_state
    from moe_experts.errors import StaleArtifactError
    from moe_experts.modeling.stages import TrainOptions, train_experts
    from moe_experts.pipeline import ensure_corpora, ensure_tokenizer

    setup = grown.setup
    before = _old_files(setup)
    declared = Path(setup.registry.source_dir) / "unix.yaml"
    data = yaml.safe_load(declared.read_text())
    data["corpus"]["sources"][0]["limit"] = 200
    declared.write_text(yaml.safe_dump(data))
    edited = _reload(setup)
    state = corpora_state(edited.workspace, edited.registry, edited.preset.data)
    assert (state.state, state.stale_domains, state.base_stale) == ("stale", ("unix",), False)
    with pytest.raises(StaleArtifactError, match="unix"):
        ensure_corpora(edited, update=False)
    assert ensure_corpora(edited, update=True)
    assert corpora_state(edited.workspace, edited.registry, edited.preset.data).state == "current"
    assert not ensure_tokenizer(edited, update=False)  # its streams are made again with the same tokenizer
    assert [b.name for b in train_experts(edited, opts=TrainOptions(update=True)) if b.trained] == ["unix"]
    after = _old_files(setup)
    assert {k: v for k, v in after.items() if "unix" not in k} == {k: v for k, v in before.items() if "unix" not in k}
