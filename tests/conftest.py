"""Shared fixtures: a micro-preset workspace built once per test session.

The test cards read real installed sources (stdlib code, HPO, package licences)
with small limits, plus a local jsonl for the general domain written here, so
the suite never depends on Debian packages being installed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MOE_EXPERTS_NO_PROGRESS", "1")
# OpenMP threads sleep instead of spinning while they wait for work. On a loaded machine (the suite beside
# other processes, or pytest beside the CLI it starts) spinning threads fight for the cores: a micro model's
# forward pass took 75 ms instead of 2.5 ms. Same thread count, same results; read when torch loads, so here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliRun:
    """What a command printed and returned, shaped like ``subprocess.CompletedProcess``."""

    args: list[str]
    returncode: int
    stdout: str | bytes
    stderr: str | bytes


def run_cli_in_process(*args: str, env: dict[str, str] | None = None, stdin: str | bytes | None = None,
                       cwd: Path | None = None, text: bool = True) -> CliRun:
    """``moe-experts ARGS`` through its real entry point (``moe_experts.cli.app.main``), in this process.

    The same ``main()`` a console script calls: its exit codes, its error messages, stdout and stderr apart.
    A subprocess pays 5-10 s of imports (torch, transformers, sentence-transformers) per command on 2 cores;
    this pays them once per session. What a command leaves in the process is put back afterwards: the
    ``moe_experts`` logger (its handlers point at this call's stderr), ``os.environ``, the working directory
    and ``sys.argv``. An uncaught exception is a traceback on stderr and exit status 1, and Python warnings are
    printed to stderr once each, as from a process. Tests of the process itself (imports, offline switches,
    torchrun, signals, what third-party loggers print) start a subprocess instead.
    """
    import traceback
    import warnings

    from click.testing import CliRunner

    from moe_experts.cli.app import main

    logger = logging.getLogger("moe_experts")
    saved_logger = (list(logger.handlers), logger.level, logger.propagate)
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    code = 0
    with (CliRunner().isolation(input=stdin, env={"MOE_EXPERTS_NO_PROGRESS": "1", **(env or {})}) as (out, err, _),
          warnings.catch_warnings(record=True) as caught):
        warnings.simplefilter("default")
        try:
            os.chdir(cwd or REPO)
            sys.argv = ["moe-experts", *args]
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - what an uncaught exception does to a process
            sys.stderr.write(traceback.format_exc())
            code = 1
        finally:
            for w in caught:
                sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
            sys.stdout.flush()
            sys.stderr.flush()
            stdout, stderr = out.getvalue(), err.getvalue()
            sys.argv = saved_argv
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            logger.handlers[:], logger.level, logger.propagate = saved_logger
    if text:
        return CliRun(list(args), code, stdout.decode(), stderr.decode("utf-8", "backslashreplace"))
    return CliRun(list(args), code, stdout, stderr)


_NOUNS = "river city garden teacher window mountain letter morning song harbor forest bridge kitchen market lantern".split()
_VERBS = "walked watched painted carried followed visited crossed remembered opened described".split()
_ADJS = "quiet bright old narrow distant gentle busy cold golden small".split()


def general_english(n_docs: int, seed: int = 0) -> list[str]:
    """Deterministic plain-English paragraphs for the test 'general' domain."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(3, 6)):
            sentences.append(
                f"The {rng.choice(_ADJS)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} "
                f"the {rng.choice(_ADJS)} {rng.choice(_NOUNS)} near the {rng.choice(_NOUNS)}."
            )
        docs.append(" ".join(sentences))
    return docs


def card(name: str, sources: list[dict], *, fallback: bool = False, min_documents: int = 20) -> dict:
    return {
        "name": name,
        "domain": name,
        "description": f"test expert for {name}",
        "fallback": fallback,
        "model": "starter",
        "corpus": {"sources": sources, "min_documents": min_documents, "min_characters": 2000},
        "examples": {"positive": [f"a {name} prompt"], "negative": ["something else"]},
    }


def write_test_cards(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    general = folder / "general.jsonl"
    general.write_text("".join(json.dumps({"text": t}) + "\n" for t in general_english(240)))
    cards = [
        card("code", [{"kind": "python_stdlib", "limit": 40}]),
        card("general", [{"kind": "local", "path": str(general), "format": "jsonl"}], fallback=True),
        card("law", [{"kind": "package_licenses", "limit": 60, "include_common_licenses": False}]),
        card("medicine", [{"kind": "hpo", "limit": 300}]),
    ]
    for c in cards:
        (folder / f"{c['name']}.yaml").write_text(yaml.safe_dump(c, sort_keys=False))
    return folder


@pytest.fixture(scope="session")
def cards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_cards(tmp_path_factory.mktemp("cards"))


@pytest.fixture(scope="session")
def micro_setup(cards_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A micro workspace with corpora, tokenizer and token streams (no models)."""
    from moe_experts.config import load_preset, load_registry
    from moe_experts.modeling.stages import Setup
    from moe_experts.pipeline import ensure_corpora, ensure_tokenizer
    from moe_experts.workspace import Workspace

    preset = load_preset("micro")
    ws = Workspace(tmp_path_factory.mktemp("ws") / "micro")
    ws.open(preset.name, preset.fingerprint())
    setup = Setup(workspace=ws, registry=load_registry(cards_dir), preset=preset)
    ensure_corpora(setup)
    ensure_tokenizer(setup)
    return setup


@pytest.fixture(scope="session")
def trained_setup(micro_setup):
    """The micro workspace with seed, experts and generalist trained."""
    from moe_experts.modeling.generalist import train_generalists
    from moe_experts.modeling.stages import train_experts, train_seed

    train_seed(micro_setup)
    train_experts(micro_setup)
    train_generalists(micro_setup)
    return micro_setup


# far_quantile 0: with 16 validation documents a domain the "far" floor is one document's
# similarity, too noisy to assert routes on; the floor itself is tested separately.
SMALL_ROUTER_RECIPE = {"max_train_documents_per_domain": 40, "max_val_documents_per_domain": 16,
                       "abstain": {"far_quantile": 0.0}}


@pytest.fixture(scope="session")
def routed(trained_setup, tmp_path_factory):
    """The trained micro workspace plus a document router trained with a small recipe."""
    from moe_experts.recipes import load_recipe
    from moe_experts.routing.train_doc import train_doc_router

    recipe_path = tmp_path_factory.mktemp("recipe") / "doc.yaml"
    recipe_path.write_text(yaml.safe_dump(SMALL_ROUTER_RECIPE))
    manifest = train_doc_router(trained_setup, load_recipe(recipe_path))
    return trained_setup, manifest, recipe_path


def save_user_model(folder: Path, texts: list[str], *, architecture: str = "llama") -> Path:
    """A tiny causal LM with its own byte-level BPE, written as any user's `save_pretrained` folder would be
    (what `hf download` puts in a snapshot): ``architecture`` llama, or gpt2 for a model the merge refuses."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    torch.manual_seed(0)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(fast), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                           eos_token_id=fast.eos_token_id, bos_token_id=fast.eos_token_id))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                             eos_token_id=fast.eos_token_id))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
