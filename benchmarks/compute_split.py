"""How Branch-Train-Merge's budget is split between the seed and the branches, over several training seeds.

The compute-matched generalist trains on as many tokens as the seed and the
branches consumed together, so at a fixed total the split decides how much of
the budget is spent on shared training and how much on each domain alone. For
every training seed (one workspace each, sharing corpora and tokenizer, as
``moe-experts --seed N quickstart`` builds them) and every split ``S:B`` (seed
steps : steps per branch) this trains a seed and the starter experts in a copy
of the workspace and scores each expert on its own domain's validation
documents (the sanity check's documents and scorer), against the workspace's
generalist. Where the split consumes other tokens than that generalist saw, a
generalist matched to the split is trained too, so every ratio is at equal
tokens. The split the workspaces were built with is scored from their own
models, without training.

    python benchmarks/compute_split.py --run runs/tiny=1234 --run runs/tiny-seed1=1 --run runs/tiny-seed2=2 \\
        --split 300:175 --split 200:200
    python benchmarks/compute_split.py --preset micro --run runs/micro=1234 --split 8:6   # dry run

Prints expert / generalist per domain for each split and seed, the mean over
seeds with its Student-t 95% interval, and writes
``benchmarks/results/compute_split-<date>-<preset>.json``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import write_result  # noqa: E402
from benchmarks.validation import device_name  # noqa: E402

logger = logging.getLogger("compute_split")


def parse_run(text: str) -> tuple[Path, int]:
    path, sep, seed = text.rpartition("=")
    if not sep or not seed.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"--run takes WORKSPACE=SEED (the --seed it was built with), not {text!r}")
    return Path(path), int(seed)


def parse_split(text: str) -> tuple[int, int]:
    seed, sep, branch = text.partition(":")
    if not sep or not seed.isdigit() or not branch.isdigit() or int(seed) < 1 or int(branch) < 1:
        raise argparse.ArgumentTypeError(f"--split takes SEED_STEPS:BRANCH_STEPS, two positive integers, not {text!r}")
    return int(seed), int(branch)


def run_setup(root: Path, preset: Any, registry: Any) -> Any:
    """The setup of a built workspace, checked against the preset it must have been built with."""
    from moe_experts.errors import ConfigError
    from moe_experts.modeling.stages import Setup
    from moe_experts.workspace import Workspace, read_json

    info = read_json(root / "workspace.json")
    if info is None:
        raise ConfigError(f"{root} is not a workspace (no workspace.json)", hint="build it with `moe-experts quickstart`")
    if info.get("preset_fingerprint") != preset.fingerprint():
        raise ConfigError(f"{root} was not built with preset {preset.name!r} and seed {preset.seed}",
                          hint="give each --run the --seed its workspace was built with")
    return Setup(workspace=Workspace(root), registry=registry, preset=preset)


def split_setup(base: Any, root: Path, preset: Any) -> Any:
    """A fresh workspace holding the base's corpora, tokenizer and token streams, bound to ``preset``."""
    from moe_experts.modeling.stages import Setup
    from moe_experts.workspace import Workspace

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name in ("corpora", "tokenizer", "tokens"):
        shutil.copytree(base.workspace.root / name, root / name)
    ws = Workspace(root)
    ws.open(preset.name, preset.fingerprint())
    return Setup(workspace=ws, registry=base.registry, preset=preset)


def consumed(manifests: list[dict[str, Any]]) -> int:
    return sum(int(m["training"]["tokens"]) for m in manifests)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t 95% interval of the mean, as ``eval spread`` computes it (one value: itself)."""
    from moe_experts.evaluation.spread import spread_of

    if len(values) < 2:
        return values[0], values[0], values[0]
    spread = spread_of(values)
    return spread.mean, spread.low, spread.high


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=parse_run, action="append", required=True, metavar="WORKSPACE=SEED",
                    help="a built workspace and the training seed it was built with (repeat: one per seed)")
    ap.add_argument("--split", type=parse_split, action="append", default=[], metavar="S:B",
                    help="seed steps : steps per branch (repeat); the workspaces' own split is always scored")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--cards", type=Path, default=Path("experts"))
    ap.add_argument("--scratch", type=Path, default=None, help="where the split workspaces go [beside each run]")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import datetime as dt

    from moe_experts.config import load_preset, load_registry
    from moe_experts.modeling.checkpoints import load_checkpoint
    from moe_experts.modeling.generalist import train_generalists
    from moe_experts.modeling.sanity import eval_documents, score_texts
    from moe_experts.modeling.stages import GENERALIST, SEED, TrainOptions, train_experts, train_seed
    from moe_experts.workspace import MANIFEST, read_json

    registry = load_registry(args.cards)
    base_preset = load_preset(args.preset)
    own = (base_preset.seed_phase.steps, base_preset.branch_phase.steps)
    splits = [own] + [s for s in dict.fromkeys(args.split) if s != own]
    docs: dict[str, list[str]] | None = None

    def score(folder: Path, setup: Any, domains: list[str]) -> dict[str, float]:
        loaded = load_checkpoint(folder)
        window = min(setup.preset.seq_len, loaded.model.config.max_position_embeddings)
        return {d: score_texts(loaded.model, loaded.tokenizer, docs[d], window=window,
                               batch_size=setup.preset.batch_size).bits_per_byte for d in domains}

    rows = []
    for root, seed in args.run:
        preset = base_preset.model_copy(update={"seed": seed})
        base = run_setup(root, preset, registry)
        if docs is None:  # the same corpora and tokenizer in every run: the same validation documents
            tokenizer = load_checkpoint(base.workspace.model_dir(SEED)).tokenizer
            docs = {d: eval_documents(base, d, tokenizer) for d in registry.domains}
        base_generalist = read_json(base.workspace.model_dir(GENERALIST) / MANIFEST)
        generalist = score(base.workspace.model_dir(GENERALIST), base, registry.domains)
        for seed_steps, branch_steps in splits:
            started = time.monotonic()
            if (seed_steps, branch_steps) == own:
                setup, trained = base, False
            else:
                phases = {"seed_phase": preset.seed_phase.model_copy(update={"steps": seed_steps}),
                          "branch_phase": preset.branch_phase.model_copy(update={"steps": branch_steps})}
                scratch = args.scratch or root.parent
                setup = split_setup(base, scratch / f"{root.name}-split-{seed_steps}-{branch_steps}",
                                    preset.model_copy(update=phases))
                train_seed(setup, TrainOptions())
                train_experts(setup, None, TrainOptions())
                trained = True
            manifests = [read_json(setup.workspace.model_dir(n) / MANIFEST)
                         for n in [SEED] + [c.name for c in registry.starters]]
            tokens = consumed(manifests)
            experts = {c.domain: score(setup.workspace.model_dir(c.name), setup, [c.domain])[c.domain]
                       for c in registry.starters}
            matched, g_tokens = generalist, int(base_generalist["training"]["tokens"])
            if tokens != g_tokens:  # the split consumed other tokens: its own matched generalist
                built = train_generalists(setup, TrainOptions())[0]
                matched = score(setup.workspace.model_dir(GENERALIST), setup, registry.domains)
                g_tokens = int(built.manifest["training"]["tokens"])
            row = {
                "run": str(root), "training_seed": seed, "seed_steps": seed_steps, "branch_steps": branch_steps,
                "trained": trained, "seconds": round(time.monotonic() - started, 1),
                "tokens": {"seed_and_branches": tokens, "generalist": g_tokens},
                "kept_steps": {m["name"]: m["training"].get("kept_step") for m in manifests},
                "experts": {d: round(v, 4) for d, v in experts.items()},
                "generalist": {d: round(matched[d], 4) for d in experts},
                "ratio": {d: round(experts[d] / matched[d], 4) for d in experts},
            }
            rows.append(row)
            print(f"seed {seed:>5}  split {seed_steps}:{branch_steps}  "
                  + "  ".join(f"{d} {r:.3f}" for d, r in row["ratio"].items()), flush=True)

    summary = []
    for seed_steps, branch_steps in splits:
        mine = [r for r in rows if (r["seed_steps"], r["branch_steps"]) == (seed_steps, branch_steps)]
        per_domain = {}
        for d in mine[0]["ratio"]:
            mean, low, high = t_interval([r["ratio"][d] for r in mine])
            per_domain[d] = {"mean": round(mean, 4), "low": round(low, 4), "high": round(high, 4)}
        macro = t_interval([sum(r["ratio"].values()) / len(r["ratio"]) for r in mine])
        summary.append({"seed_steps": seed_steps, "branch_steps": branch_steps, "seeds": len(mine),
                        "ratio": per_domain, "macro": [round(x, 4) for x in macro]})
    result = {"benchmark": "compute_split", "preset": base_preset.name, "split": "val", "machine": device_name(),
              "date": dt.date.today().isoformat(), "rows": rows, "summary": summary}
    write_result(result, args.out, f"compute_split-{result['date']}-{base_preset.name}", shown={})
    print(table(summary))


def table(summary: list[dict[str, Any]]) -> str:
    """Markdown: expert / generalist per domain, mean over seeds [t-interval]."""
    domains = list(summary[0]["ratio"])
    lines = ["| seed steps : branch steps | seeds | " + " | ".join(domains) + " | macro |",
             "|---|---:|" + "---|" * (len(domains) + 1)]
    for s in summary:
        cells = [f"{s['ratio'][d]['mean']:.3f} [{s['ratio'][d]['low']:.3f}, {s['ratio'][d]['high']:.3f}]"
                 for d in domains]
        m = s["macro"]
        lines.append(f"| {s['seed_steps']}:{s['branch_steps']} | {s['seeds']} | " + " | ".join(cells)
                     + f" | {m[0]:.3f} [{m[1]:.3f}, {m[2]:.3f}] |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
