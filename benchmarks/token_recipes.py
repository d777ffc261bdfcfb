"""Token-router recipe variants on one set of experts, scored on the validation split.

Each variant is the default token recipe with some fields changed; the MoE is
merged from the workspace's experts, trained, and scored on the validation
documents the sanity check uses, next to the generalist and the oracle.

    python benchmarks/token_recipes.py -w runs/tiny \
        --variant default --variant merge_rest=seed --variant include_seed=true --variant gate_init=random

Writes ``benchmarks/results/token_recipes-<date>-<preset>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.branch_recipes import score  # noqa: E402
from benchmarks.machine import cpu_model, usable_cores, write_result  # noqa: E402
from moe_experts.config import load_preset, load_registry  # noqa: E402
from moe_experts.modeling.checkpoints import load_checkpoint  # noqa: E402
from moe_experts.modeling.sanity import eval_documents  # noqa: E402
from moe_experts.modeling.stages import GENERALIST, SEED, Setup, TrainOptions  # noqa: E402
from moe_experts.recipes import TokenRouterRecipe  # noqa: E402
from moe_experts.workspace import Workspace  # noqa: E402


def variant(spec: str) -> tuple[str, TokenRouterRecipe]:
    """'default', or 'field=value[,field=value]' (values parsed as YAML) over the default recipe."""
    if spec == "default":
        return spec, TokenRouterRecipe()
    fields = dict(part.split("=", 1) for part in spec.split(","))
    return spec, TokenRouterRecipe.model_validate({k: yaml.safe_load(v) for k, v in fields.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workspace", type=Path, required=True, help="workspace with seed, experts, generalist")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--cards", type=Path, default=Path("experts"))
    parser.add_argument("--variant", action="append", default=[], help="'default' or field=value,... (repeat)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from moe_experts.routing.train_token import token_router_dir, train_token_router

    preset = load_preset(args.preset)
    setup = Setup(workspace=Workspace(args.workspace), registry=load_registry(args.cards), preset=preset)
    tokenizer = load_checkpoint(setup.workspace.model_dir(SEED)).tokenizer
    docs = {d: eval_documents(setup, d, tokenizer) for d in setup.registry.domains}
    device = f"{cpu_model()}, {usable_cores()} cores"
    result: dict = {"preset": preset.name, "machine": device, "date": dt.date.today().isoformat(), "split": "val",
                    "generalist": score(setup, setup.workspace.model_dir(GENERALIST), docs),
                    "oracle": {c.domain: score(setup, setup.workspace.model_dir(c.name), docs)[c.domain]
                               for c in setup.registry.starters},
                    "variants": {}}
    for spec in args.variant or ["default"]:
        name, recipe = variant(spec)
        started = time.monotonic()
        manifest = train_token_router(setup, recipe, TrainOptions(force=True), allow_dead_experts=True)
        result["variants"][name] = {"recipe": recipe.model_dump(mode="json"),
                                    "scores": score(setup, token_router_dir(setup.workspace.root), docs),
                                    "seconds": round(time.monotonic() - started, 1),
                                    "experts": manifest["experts"], "dead": manifest["health"]["dead"]}
    write_result(result, args.out, f"token_recipes-{result['date']}-{preset.name}", shown={})
    domains = setup.registry.domains
    rows = [("generalist", result["generalist"]), ("oracle", result["oracle"]),
            *((f"token-moe, {n}", v["scores"]) for n, v in result["variants"].items())]
    print("| system | " + " | ".join(domains) + " | macro |\n|---|" + "---:|" * (len(domains) + 1))
    for name, scores in rows:
        print(f"| {name} | " + " | ".join(f"{scores[d]:.3f}" for d in domains)
              + f" | {sum(scores[d] for d in domains) / len(domains):.3f} |")


if __name__ == "__main__":
    main()
