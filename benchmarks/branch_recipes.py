"""Branch recipes compared: full branches (BTM) against shared-trunk branches (DEMix), and the MoE each merges into.

From one workspace that has corpora, a tokenizer and a seed, each variant gets
its own copy of the workspace (seed included), trains the starter experts, and
is scored on the validation split of every domain (the sanity check's documents
and scorer): each expert alone, the oracle (each domain's own expert), the
seed, the compute-matched generalist, and the token-level MoE merged from that
variant's experts under each token recipe asked for.

    python benchmarks/branch_recipes.py -w runs/tiny --token-recipes all,gates
    python benchmarks/branch_recipes.py -w runs/micro --preset micro --token-steps 4   # dry run

Writes ``benchmarks/results/branch_recipes-<date>-<preset>.json`` and prints a markdown table.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import write_result  # noqa: E402
from benchmarks.validation import open_bench, parser  # noqa: E402
from moe_experts.modeling.generalist import train_generalists  # noqa: E402
from moe_experts.modeling.stages import GENERALIST, SEED, Setup, TrainOptions, train_experts  # noqa: E402
from moe_experts.recipes import TokenRouterRecipe  # noqa: E402
from moe_experts.workspace import Workspace  # noqa: E402

logger = logging.getLogger("branch_recipes")


def variant_setup(base: Setup, root: Path, trunk: str) -> Setup:
    """A copy of the base workspace's data and seed, bound to the preset with ``branch_trunk: trunk``."""
    if root.exists():
        shutil.rmtree(root)
    keep = {"corpora", "tokenizer", "tokens"}
    root.mkdir(parents=True)
    for item in base.workspace.root.iterdir():
        if item.name in keep:
            shutil.copytree(item, root / item.name)
    shutil.copytree(base.workspace.model_dir(SEED), root / "models" / SEED)
    preset = base.preset.model_copy(update={"branch_trunk": trunk})
    ws = Workspace(root)
    ws.open(preset.name, preset.fingerprint())
    return Setup(workspace=ws, registry=base.registry, preset=preset)


def main() -> None:
    ap = parser(__doc__, "workspace with corpora, tokenizer, seed")
    ap.add_argument("--trunks", default="train,frozen")
    ap.add_argument("--token-recipes", default="all", help="comma list of token-router 'train' modes (all, gates)")
    ap.add_argument("--frozen-token-recipes", default="all,gates",
                    help="the same for shared-trunk experts, whose exact merge makes gates-only training worth a row")
    ap.add_argument("--token-steps", type=int, default=None, help="token-router steps [the recipe's]")
    args = ap.parse_args()
    bench = open_bench(args)
    base = bench.setup
    from moe_experts.routing.train_token import token_router_dir, train_token_router

    result = bench.record(variants={})
    result["seed"] = bench.score(base.workspace.model_dir(SEED))
    for trunk in args.trunks.split(","):
        setup = variant_setup(base, args.workspace.parent / f"{args.workspace.name}-trunk-{trunk}", trunk)
        started = time.monotonic()
        built = train_experts(setup, None, TrainOptions())
        row: dict = {"experts_seconds": round(time.monotonic() - started, 1), "experts": {}, "training": {}}
        for b in built:
            row["experts"][b.name] = bench.score(setup.workspace.model_dir(b.name), setup)
            t = b.manifest["training"]
            row["training"][b.name] = {k: t[k] for k in ("steps", "kept_step", "tokens", "tokens_seen")}
        row["oracle"] = {c.domain: row["experts"][c.name][c.domain] for c in setup.registry.starters}
        started = time.monotonic()
        generalist = train_generalists(setup, TrainOptions())[0]
        row["generalist_seconds"] = round(time.monotonic() - started, 1)
        row["generalist"] = bench.score(setup.workspace.model_dir(GENERALIST), setup)
        row["generalist_tokens"] = generalist.manifest["training"]["tokens"]
        row["token_moe"] = {}
        for mode in (args.frozen_token_recipes if trunk == "frozen" else args.token_recipes).split(","):
            recipe = TokenRouterRecipe(train=mode)
            if args.token_steps:
                training = recipe.training.model_copy(update={"steps": args.token_steps,
                                                              "warmup_steps": min(recipe.training.warmup_steps, args.token_steps // 10)})
                recipe = recipe.model_copy(update={"training": training})
            started = time.monotonic()
            manifest = train_token_router(setup, recipe, TrainOptions(force=True), allow_dead_experts=True)
            row["token_moe"][mode] = {"scores": bench.score(token_router_dir(setup.workspace.root), setup),
                                      "seconds": round(time.monotonic() - started, 1),
                                      "steps": manifest["training"]["steps"], "dead": manifest["health"]["dead"]}
        result["variants"][trunk] = row
    write_result(result, args.out, f"branch_recipes-{result['date']}-{base.preset.name}", shown={})
    print(table(result))


def table(result: dict) -> str:
    domains = list(result["seed"])
    lines = ["| system | " + " | ".join(domains) + " | macro |", "|---|" + "---:|" * (len(domains) + 1)]

    def row(name: str, scores: dict[str, float]) -> None:
        macro = sum(scores[d] for d in domains) / len(domains)
        lines.append(f"| {name} | " + " | ".join(f"{scores[d]:.3f}" for d in domains) + f" | {macro:.3f} |")

    row("seed", result["seed"])
    for trunk, v in result["variants"].items():
        row(f"generalist ({trunk} run, {v['generalist_tokens']:,} tokens)", v["generalist"])
        row(f"oracle, {trunk} trunk", v["oracle"])
        for mode, m in v["token_moe"].items():
            row(f"token-moe, {trunk} trunk, train {mode}, {m['steps']} steps", m["scores"])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
