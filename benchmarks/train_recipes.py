"""Training recipes for the experts and the compute-matched generalist, compared over several training seeds.

Issue 11's `tiny` targets compare routed experts with a generalist trained on
as many tokens, and count a target met only when the mean over training
seeds and its interval clear it. This trains, for every variant (changes to
the preset, by dotted field) and every training seed, a seed model, the
starter experts and the compute-matched generalist from one workspace's
corpora and tokenizer, and scores each on the validation documents the sanity
check uses (no test split: this chooses a recipe). It prints expert /
generalist per domain, the mean over seeds with its Student-t 95% interval,
and the absolute bits per byte of both, so a change that moves the ratio says
whether it moved the experts or the generalist, and how much it moved the
spread over seeds.

    python benchmarks/train_recipes.py -w /tmp/rb/base --seeds 1234,1,2 \\
        --variant preset: \\
        --variant zero:branch_phase.min_lr_ratio=0,generalist_decay.min_lr_ratio=0
    python benchmarks/train_recipes.py -w runs/micro --preset micro --seeds 1,2 --variant preset:   # dry run

``-w`` needs corpora and a tokenizer (``moe-experts data build`` and ``data tokenizer``); every variant and
seed trains in its own folder under ``--scratch`` (default: beside it), removed after scoring unless
``--keep``. A model that a variant would train exactly as an earlier variant did (same training seed) is
trained once and reused: the seed model across variants that change only the branches' or the generalist's fields,
the experts across those that change only the generalist's, the generalist across those that change only the
seed's or the branches' schedule and leave the tokens it is matched to. Training is deterministic on CPU, so
it would come out the same. ``--cache DIR`` keeps those models across runs, so a later run's preset rows cost
only their scoring (for the same workspace data; clear it after changing the training code). Writes
``benchmarks/results/train_recipes-<date>-<preset>.json`` (or ``--out``) after every scored row, with
``"complete": false`` until the last, so a run stopped part-way keeps what it measured.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compute_split import consumed, split_setup, t_interval  # noqa: E402
from benchmarks.machine import RESULTS, write_result  # noqa: E402
from benchmarks.validation import device_name  # noqa: E402

logger = logging.getLogger("train_recipes")


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``LABEL:path=value,path=value`` -> (label, {dotted path: YAML value}); ``LABEL:`` is the preset as is."""
    label, sep, rest = text.partition(":")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"--variant takes LABEL:field.path=value,..., not {text!r}")
    changes: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        path, eq, value = item.partition("=")
        if not eq or not path:
            raise argparse.ArgumentTypeError(f"--variant {label}: {item!r} is not field.path=value")
        changes[path] = yaml.safe_load(value)
    return label, changes


def apply_changes(preset: Any, changes: dict[str, Any], seed: int) -> Any:
    """``preset`` with each dotted field set (validated as a preset file would be) and training seed ``seed``."""
    from moe_experts.config import Preset

    data = copy.deepcopy(preset.model_dump(mode="python"))
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
        node[leaf] = value
    data["seed"] = seed
    return Preset.model_validate(data)


# preset fields a model does not depend on: it is reused across variants that differ only in these
NOT_EXPERTS = {"speed", "generalist_learning_rate", "generalist_warmup_steps", "generalist_decay",
               "parameter_matched_generalist"}
NOT_SEED = NOT_EXPERTS | {"branch_phase", "branch_trunk"}
# the generalist's steps come from the tokens the seed and branches consumed (part of its key), and it takes the
# seed phase's weight decay only (also in its key)
NOT_GENERALIST = {"speed", "seed_phase", "branch_phase", "branch_trunk"}


def reuse_key(preset: Any, ignored: set[str], **extra: Any) -> str:
    from moe_experts.config import hash_json

    return hash_json({"preset": preset.recorded(exclude=ignored), **extra})


def reuse_or_train(cache: Path, key: str, setup: Any, names: str | list[str], train: Any) -> None:
    """Train the models ``names`` in ``setup``'s workspace, or copy them from ``cache/key``, where a variant
    trained them."""
    from moe_experts.workspace import MANIFEST, read_json, write_json_atomic

    names = [names] if isinstance(names, str) else names
    kept = cache / key
    if kept.is_dir():
        for name in names:
            folder = setup.workspace.model_dir(name)
            shutil.copytree(kept / name, folder)
            manifest = read_json(folder / MANIFEST)
            manifest["inputs"]["preset"] = setup.preset.fingerprint()  # the same weights, under this variant's preset
            write_json_atomic(folder / MANIFEST, manifest)
        logger.info("%s: the same recipe as a variant before, reusing its weights", ", ".join(names))
        return
    train()
    partial = cache / f".{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left by a run stopped mid-copy (a kept --cache outlives it)
    for name in names:
        shutil.copytree(setup.workspace.model_dir(name), partial / name)
    partial.rename(kept)  # the key exists only once every model is in it


CACHE_DATA = "DATA.json"


def open_cache(cache: Path, data: dict[str, str], keep: bool) -> None:
    """Make ``cache`` ready: emptied unless ``keep``; a kept one must hold models of the same ``data`` (the
    workspace's corpus and tokenizer hashes: the keys hold the recipe alone)."""
    from moe_experts.workspace import read_json, write_json_atomic

    if not keep and cache.exists():
        shutil.rmtree(cache)
    marker = cache / CACHE_DATA
    if marker.exists() and (held := read_json(marker)) != data:
        raise ValueError(f"{cache} holds models trained on other corpora or another tokenizer "
                         f"({held}, not {data}): remove it or name another --cache")
    if not marker.exists() and cache.exists() and any(cache.iterdir()):
        raise ValueError(f"{cache} is not a train_recipes cache (it has files but no {CACHE_DATA}): "
                         "remove it or name another --cache")
    cache.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", type=Path, required=True, help="a workspace with corpora and a tokenizer")
    ap.add_argument("--variant", type=parse_variant, action="append", required=True, metavar="LABEL:CHANGES",
                    help="a recipe: the preset with these dotted fields set (repeat); LABEL: alone is the preset")
    ap.add_argument("--seeds", default="1234,1,2", help="training seeds, comma-separated [1234,1,2]")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--cards", type=Path, default=Path("experts"))
    ap.add_argument("--scratch", type=Path, default=None, help="where the variants train [beside -w]")
    ap.add_argument("--keep", action="store_true", help="keep each variant's workspace")
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep the trained models here across runs, and reuse those of earlier runs on the same "
                         "workspace data [a fresh folder under --scratch, removed at the end]; clear it after a "
                         "change to the training code: a model is known by its recipe, not by the code")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds takes comma-separated integers, not {args.seeds!r}")
    if not (args.workspace / "tokenizer").is_dir():
        ap.error(f"{args.workspace} has no tokenizer: run `moe-experts -w {args.workspace} data build` "
                 "and `data tokenizer` first")

    from moe_experts.config import load_preset, load_registry
    from moe_experts.data.tokenizer import load_tokenizer
    from moe_experts.modeling.generalist import train_generalists
    from moe_experts.modeling.sanity import eval_documents
    from moe_experts.modeling.stages import (GENERALIST, SEED, Setup, TrainOptions, data_inputs, train_experts,
                                              train_seed)
    from moe_experts.workspace import MANIFEST, Workspace, read_json, write_json_atomic
    from benchmarks.validation import Bench

    registry = load_registry(args.cards)
    base_preset = load_preset(args.preset)
    variants = [(label, changes, [apply_changes(base_preset, changes, s) for s in seeds])
                for label, changes in args.variant]  # every variant validated before any training
    base = Setup(workspace=Workspace(args.workspace), registry=registry, preset=base_preset)
    tokenizer = load_tokenizer(base.workspace.tokenizer_dir)
    bench = Bench(base, {d: eval_documents(base, d, tokenizer) for d in registry.domains})
    scratch = args.scratch or args.workspace.parent
    cache = args.cache or scratch / "recipe-cache"
    data = data_inputs(base)
    try:
        open_cache(cache, {"corpus_hash": data.corpus_hash, "tokenizer_hash": data.tokenizer_hash},
                   keep=args.cache is not None)
    except ValueError as e:
        ap.error(str(e))

    started_on = dt.date.today().isoformat()
    stem = f"train_recipes-{started_on}-{base_preset.name}"
    out = args.out or RESULTS / f"{stem}.json"
    rows: list[dict[str, Any]] = []
    for label, changes, presets in variants:
        for seed, preset in zip(seeds, presets):
            started = time.monotonic()
            setup = split_setup(base, scratch / f"recipe-{label}-{seed}", preset)
            reuse_or_train(cache, reuse_key(preset, NOT_SEED, model=SEED), setup, SEED,
                           lambda: train_seed(setup, TrainOptions()))
            starters = [c.name for c in registry.starters]
            reuse_or_train(cache, reuse_key(preset, NOT_EXPERTS, model="experts"), setup, starters,
                           lambda: train_experts(setup, None, TrainOptions()))
            branches = [read_json(setup.workspace.model_dir(n) / MANIFEST)
                        for n in [SEED] + [c.name for c in registry.starters]]
            reuse_or_train(cache, reuse_key(preset, NOT_GENERALIST, model=GENERALIST, tokens=consumed(branches),
                                                weight_decay=preset.seed_phase.weight_decay),
                           setup, GENERALIST, lambda: train_generalists(setup, TrainOptions()))
            manifests = {n: read_json(setup.workspace.model_dir(n) / MANIFEST)
                         for n in [SEED, GENERALIST] + [c.name for c in registry.starters]}
            experts = {c.domain: bench.score(setup.workspace.model_dir(c.name), setup)[c.domain]
                       for c in registry.starters}
            generalist = bench.score(setup.workspace.model_dir(GENERALIST), setup)
            seed_model = bench.score(setup.workspace.model_dir(SEED), setup)
            row = {
                "variant": label, "changes": changes, "training_seed": seed,
                "seconds": round(time.monotonic() - started, 1),
                "tokens": {"seed_and_branches": consumed([m for n, m in manifests.items() if n != GENERALIST]),
                           "generalist": int(manifests[GENERALIST]["training"]["tokens"])},
                "kept_steps": {n: m["training"].get("kept_step") for n, m in manifests.items()},
                "seed": {d: round(v, 4) for d, v in seed_model.items()},
                "experts": {d: round(v, 4) for d, v in experts.items()},
                "generalist": {d: round(generalist[d], 4) for d in experts},
                "ratio": {d: round(experts[d] / generalist[d], 4) for d in experts},
            }
            rows.append(row)
            if not args.keep:
                shutil.rmtree(setup.workspace.root)
            print(f"{label:>12}  seed {seed:>5}  " + "  ".join(f"{d} {r:.3f}" for d, r in row["ratio"].items())
                  + f"  ({row['seconds']:.0f} s)", flush=True)
            # every row on disk as soon as it is scored: a run stopped part-way keeps what it measured
            write_json_atomic(out, result_of(rows, variants, seeds, base_preset.name, started_on, complete=False))

    if not args.keep and args.cache is None:
        shutil.rmtree(cache, ignore_errors=True)
    result = result_of(rows, variants, seeds, base_preset.name, started_on, complete=True)
    write_result(result, out, stem, shown={})
    print(table(result["summary"]))


def result_of(rows: list[dict[str, Any]], variants: list[Any], seeds: list[int], preset: str, date: str,
              complete: bool) -> dict[str, Any]:
    """The result file: every row so far, and a summary of each variant with at least one row."""
    summary = [summarise(label, mine) for label, _, _ in variants
               if (mine := [r for r in rows if r["variant"] == label])]
    return {"benchmark": "train_recipes", "preset": preset, "split": "val", "machine": device_name(),
            "date": date, "seeds": seeds, "complete": complete, "rows": rows, "summary": summary}


def summarise(label: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds [t-interval] of each ratio and of the experts' and the generalist's bits per byte."""
    out: dict[str, Any] = {"variant": label, "seeds": len(rows), "changes": rows[0]["changes"]}
    for key in ("ratio", "experts", "generalist"):
        out[key] = {}
        for d in rows[0]["ratio"]:
            mean, low, high = t_interval([r[key][d] for r in rows])
            out[key][d] = {"mean": round(mean, 4), "low": round(low, 4), "high": round(high, 4)}
    out["macro"] = [round(x, 4) for x in t_interval([sum(r["ratio"].values()) / len(r["ratio"]) for r in rows])]
    return out


def table(summary: list[dict[str, Any]]) -> str:
    """Markdown: expert / generalist per domain, mean over seeds [t-interval]; then the bits per byte behind it."""
    domains = list(summary[0]["ratio"])
    lines = ["| variant | seeds | " + " | ".join(domains) + " | macro |", "|---|---:|" + "---|" * (len(domains) + 1)]
    for s in summary:
        cells = [f"{s['ratio'][d]['mean']:.3f} [{s['ratio'][d]['low']:.3f}, {s['ratio'][d]['high']:.3f}]"
                 for d in domains]
        m = s["macro"]
        lines.append(f"| {s['variant']} | {s['seeds']} | " + " | ".join(cells) + f" | {m[0]:.3f} [{m[1]:.3f}, {m[2]:.3f}] |")
    lines += ["", "| variant | " + " | ".join(f"{d} expert / generalist bpb" for d in domains) + " |",
              "|---|" + "---|" * len(domains)]
    for s in summary:
        lines.append(f"| {s['variant']} | " + " | ".join(
            f"{s['experts'][d]['mean']:.3f} / {s['generalist'][d]['mean']:.3f}" for d in domains) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
