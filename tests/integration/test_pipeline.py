"""The foundation pipeline on the micro preset: corpora, tokenizer, BTM training, sanity check."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from moe_experts.data.build import corpora_dir, domain_manifest, iter_documents
from moe_experts.data.split import SPLITS
from moe_experts.data.tokenizer import load_stream, load_tokenizer
from moe_experts.errors import CheckpointError, StaleArtifactError, TrainingError
from moe_experts.modeling.checkpoints import load_checkpoint, new_model
from moe_experts.modeling.sanity import run_sanity, score_texts
from moe_experts.modeling.generalist import train_generalists
from moe_experts.modeling.stages import GENERALIST, SEED, TrainOptions, model_manifest, train_experts, train_seed
from moe_experts.pipeline import quickstart


def test_corpora_splits_are_disjoint_and_counted(micro_setup):
    for domain in micro_setup.registry.domains:
        ids = {s: [d.id for d in iter_documents(micro_setup.workspace, domain, s)] for s in SPLITS}
        assert all(ids[s] for s in SPLITS), f"{domain} has an empty split"
        all_ids = [i for s in SPLITS for i in ids[s]]
        assert len(all_ids) == len(set(all_ids))  # no document in two splits, none twice
        manifest = domain_manifest(micro_setup.workspace, domain)
        for s in SPLITS:
            assert manifest["splits"][s]["documents"] == len(ids[s])
        assert manifest["tokens"]["train"] > 0


def test_no_document_text_crosses_domains(micro_setup):
    seen: dict[str, str] = {}
    for domain in micro_setup.registry.domains:
        for s in SPLITS:
            for doc in iter_documents(micro_setup.workspace, domain, s):
                assert seen.setdefault(doc.id, domain) == domain


def test_corpus_build_is_deterministic(micro_setup, tmp_path):
    from moe_experts.data.build import build_corpora
    from moe_experts.workspace import Workspace

    other = Workspace(tmp_path / "again")
    other.open("micro", "x")
    top = build_corpora(other, micro_setup.registry, micro_setup.preset.data)
    first = json.loads((corpora_dir(micro_setup.workspace) / "moe_experts.json").read_text())
    assert top["domains"] == first["domains"]  # same file hashes, split by split


def test_tokenizer_round_trips_any_text(micro_setup):
    tok = load_tokenizer(micro_setup.workspace.tokenizer_dir)
    samples = [
        "def f(x):\n\treturn x ** 2  # square\n",
        "Überprüfung — naïve café, 東京, emoji 🤖, tabs\tand  double  spaces",
        "  leading and trailing spaces  ",
        "".join(chr(c) for c in range(32, 400)),
    ]
    for text in samples:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert tok.unk_token_id is None  # byte-level: nothing is ever unknown
    assert len(tok) <= micro_setup.preset.vocab_size


def test_token_streams_match_documents(micro_setup):
    tok = load_tokenizer(micro_setup.workspace.tokenizer_dir)
    tok_hash = json.loads((micro_setup.workspace.tokenizer_dir / "moe_experts.json").read_text())["tokenizer_hash"]
    stream = load_stream(micro_setup.workspace, tok_hash, "law", "val")
    docs = [d.text for d in iter_documents(micro_setup.workspace, "law", "val")]
    expected = [i for text in docs for i in [*tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]]
    assert np.array_equal(np.asarray(stream), np.asarray(expected))


def test_training_lowers_the_loss(trained_setup):
    training = model_manifest(trained_setup, SEED)["training"]
    assert training["steps"] == trained_setup.preset.seed_phase.steps
    assert training["last_loss"] < training["first_loss"]
    # and on held-out text: the trained seed beats an untrained model of the same shape
    loaded = load_checkpoint(trained_setup.workspace.model_dir(SEED))
    fresh = new_model(trained_setup.preset, loaded.tokenizer, seed=99).eval()
    docs = [d.text for d in iter_documents(trained_setup.workspace, "medicine", "val")][:20]
    trained = score_texts(loaded.model, loaded.tokenizer, docs, window=32, batch_size=8)
    untrained = score_texts(fresh, loaded.tokenizer, docs, window=32, batch_size=8)
    assert trained.perplexity < untrained.perplexity


def test_checkpoints_round_trip_identical_logits(trained_setup):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = trained_setup.workspace.model_dir("law")
    a = load_checkpoint(folder)
    b = AutoModelForCausalLM.from_pretrained(folder).eval()  # the plain transformers path users take
    tok = AutoTokenizer.from_pretrained(folder)
    x = tok(["Permission is hereby granted, free of charge"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(a.model(input_ids=x).logits, b(input_ids=x).logits)
    assert type(b).__name__ == "LlamaForCausalLM"


def test_experts_branch_from_the_seed_and_generalist_is_compute_matched(trained_setup):
    seed = model_manifest(trained_setup, SEED)
    seed_weights = next(iter(seed["weights_sha256"].values()))[:16]
    n = len(trained_setup.registry.starters)
    branch_tokens = 0
    for card in trained_setup.registry.starters:
        m = model_manifest(trained_setup, card.name)
        assert m["inputs"]["parent_weights"] == seed_weights
        assert m["domains"] == [card.domain]
        branch_tokens += m["training"]["tokens"]
    generalist = model_manifest(trained_setup, GENERALIST)
    # matched to the tokens seed and branches consumed (micro's budgets divide into whole steps)
    assert generalist["training"]["tokens"] == seed["training"]["tokens"] + branch_tokens
    assert generalist["matched_to"] == {SEED: seed["training"]["tokens"],
                                        **{c.name: model_manifest(trained_setup, c.name)["training"]["tokens"]
                                           for c in trained_setup.registry.starters}}
    assert generalist["training"]["steps"] == trained_setup.preset.seed_phase.steps + n * trained_setup.preset.branch_phase.steps
    assert generalist["parameters"] == seed["parameters"]
    # the tokens behind each kept model: an expert's include its seed's
    for card in trained_setup.registry.starters:
        m = model_manifest(trained_setup, card.name)["training"]
        assert m["tokens_seen"] == seed["training"]["tokens_seen"] + m["kept_tokens"]


def test_second_run_reuses_everything(trained_setup):
    from moe_experts.evaluation.options import EvalOptions
    from moe_experts.recipes import DocRouterRecipe
    from tests.conftest import SMALL_ROUTER_RECIPE as SMALL

    recipe = DocRouterRecipe.model_validate(SMALL)
    # a small report: that it is reused is what is tested here; test_cli's quickstart reuses a default one
    report = EvalOptions(max_docs=2, suites=False, speed_prompts=0, latency_requests=0)
    run_sanity(trained_setup)
    quickstart(trained_setup, TrainOptions(), recipe=recipe, evaluation=report)  # the router, if no test trained it yet
    result = quickstart(trained_setup, TrainOptions(), recipe=recipe, evaluation=report)
    assert [t.stage for t in result.timings if t.built] == []
    assert result.sanity is not None and result.sanity.reused


def test_sanity_report_covers_every_model_and_domain(trained_setup):
    report = run_sanity(trained_setup)
    assert set(report.models) == {SEED, GENERALIST, *trained_setup.registry.names}
    for m in report.models:
        for d in report.domains:
            s = report.scores[m][d]
            assert s.perplexity > 1 and s.bits_per_byte > 0 and s.tokens > 0
    table = report.table()
    assert all(name in table for name in report.models)
    assert (trained_setup.workspace.reports_dir / "sanity" / "sanity.md").exists()
    # the failure list is exactly the experts that do not beat a baseline at home
    expected = {
        c.name
        for c in trained_setup.registry.starters
        for base in (SEED, GENERALIST)
        if report.scores[c.name][c.domain].bits_per_byte >= report.scores[base][c.domain].bits_per_byte
    }
    assert {f.split("'")[1] for f in report.failures} == expected


def test_stale_model_is_refused_with_what_differs(trained_setup, tmp_path):
    manifest_path = trained_setup.workspace.model_dir("law") / "moe_experts.json"
    saved = manifest_path.read_text()
    data = json.loads(saved)
    data["inputs"]["tokenizer_hash"] = "0000"
    manifest_path.write_text(json.dumps(data))
    try:
        with pytest.raises(StaleArtifactError, match="tokenizer_hash"):
            train_experts(trained_setup, ["law"])
    finally:
        manifest_path.write_text(saved)


def test_corrupted_checkpoint_is_one_clear_error(trained_setup, tmp_path):
    copy = tmp_path / "law"
    shutil.copytree(trained_setup.workspace.model_dir("law"), copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(copy)
    (copy / "moe_experts.json").unlink()  # without our manifest: transformers' own error, still wrapped
    with pytest.raises(CheckpointError, match="cannot load the model"):
        load_checkpoint(copy)


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_reaches_the_same_model(micro_setup, tmp_path):
    """Stop training after a checkpoint, resume, and end where an uninterrupted run ends."""
    from transformers import TrainerCallback

    from moe_experts.modeling.stages import Setup
    from moe_experts.workspace import Workspace

    def fresh_setup(name: str) -> Setup:
        root = tmp_path / name
        shutil.copytree(micro_setup.workspace.root, root, ignore=shutil.ignore_patterns("models", "checkpoints"))
        return Setup(workspace=Workspace(root), registry=micro_setup.registry, preset=micro_setup.preset)

    class StopAt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == micro_setup.preset.save_steps:
                raise _Interrupt  # like a kill right after the checkpoint was written

    straight = fresh_setup("straight")
    train_seed(straight)

    broken = fresh_setup("broken")
    with pytest.raises(_Interrupt):
        train_seed(broken, TrainOptions(callbacks=[StopAt()]))
    assert not broken.workspace.model_dir(SEED).exists()  # nothing half-written
    with pytest.raises(TrainingError, match="`resume`"):
        train_seed(broken)
    resumed = train_seed(broken, TrainOptions(resume=True))

    assert resumed.manifest["training"]["steps"] == micro_setup.preset.seed_phase.steps
    assert resumed.manifest["training"]["resumed_from_step"] == micro_setup.preset.save_steps
    a = load_checkpoint(straight.workspace.model_dir(SEED)).model.state_dict()
    b = load_checkpoint(broken.workspace.model_dir(SEED)).model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_restart_discards_the_interrupted_run(trained_setup, tmp_path):
    from moe_experts.modeling.stages import Setup
    from moe_experts.workspace import Workspace

    root = tmp_path / "ws"  # seed and experts, which the generalist is matched to; no generalist
    shutil.copytree(trained_setup.workspace.root, root, ignore=shutil.ignore_patterns("generalist*", "checkpoints"))
    setup = Setup(workspace=Workspace(root), registry=trained_setup.registry, preset=trained_setup.preset)
    leftover = setup.workspace.checkpoints_dir(GENERALIST) / "checkpoint-4"
    leftover.mkdir(parents=True)
    with pytest.raises(TrainingError, match="`restart`"):
        train_generalists(setup)
    built = train_generalists(setup, TrainOptions(restart=True))
    assert built[0].manifest["training"]["resumed_from_step"] is None
    assert not setup.workspace.checkpoints_dir(GENERALIST).exists()


def test_parameter_matched_generalist(trained_setup, tmp_path):
    from moe_experts.modeling.flops import llama_parameters
    from moe_experts.modeling.stages import GENERALIST_PARAMS, Setup
    from moe_experts.workspace import Workspace

    root = tmp_path / "ws"
    shutil.copytree(trained_setup.workspace.root, root, ignore=shutil.ignore_patterns("generalist*", "checkpoints"))
    preset = trained_setup.preset.model_copy(update={"parameter_matched_generalist": True})
    setup = Setup(workspace=Workspace(root), registry=trained_setup.registry, preset=preset)
    built = {b.name: b for b in train_generalists(setup)}
    assert set(built) == {GENERALIST, GENERALIST_PARAMS}
    compute, params = built[GENERALIST].manifest, built[GENERALIST_PARAMS].manifest
    assert compute["matched"] == "compute" and params["matched"] == "parameters"
    vocab = len(load_tokenizer(setup.workspace.tokenizer_dir))
    target = len(setup.registry.starters) * llama_parameters(preset.model, vocab)
    # micro widths move in steps of 16, so the nearest shape can be ~20% off; tiny and small
    # are held to 5% in tests/unit/test_model_shapes.py
    assert abs(params["parameters"] - target) / target < 0.25
    assert params["parameters"] > 3 * compute["parameters"]
    assert params["training"]["tokens"] == compute["training"]["tokens"]  # same data, 4x the parameters


def test_training_is_repeatable(micro_setup, tmp_path):
    """Same preset seed, same data: bit-identical weights (and a different seed gives others)."""
    from moe_experts.modeling.stages import Setup
    from moe_experts.workspace import Workspace

    def run(name: str, seed: int) -> dict:
        root = tmp_path / name
        shutil.copytree(micro_setup.workspace.root, root, ignore=shutil.ignore_patterns("models", "checkpoints"))
        preset = micro_setup.preset.model_copy(update={"seed": seed})
        setup = Setup(workspace=Workspace(root), registry=micro_setup.registry, preset=preset)
        train_seed(setup)
        return load_checkpoint(setup.workspace.model_dir(SEED)).model.state_dict()

    a, b, c = run("a", 7), run("b", 7), run("c", 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
