"""Token-router recipe variants on one set of experts, scored on the validation split.

Each variant is the default token recipe with some fields changed; the MoE is
merged from the workspace's experts, trained, and scored on the validation
documents the sanity check uses, next to the generalist and the oracle.

    python benchmarks/token_recipes.py -w runs/tiny \
        --variant default --variant merge_rest=seed --variant include_seed=true --variant gate_init=random

Writes ``benchmarks/results/token_recipes-<date>-<preset>.json`` and prints a markdown table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import write_result  # noqa: E402
from benchmarks.validation import open_bench, parser  # noqa: E402
from moe_experts.modeling.stages import GENERALIST, TrainOptions  # noqa: E402
from moe_experts.recipes import TokenRouterRecipe  # noqa: E402


def variant(spec: str) -> tuple[str, TokenRouterRecipe]:
    """'default', or 'field=value[,field=value]' (values parsed as YAML) over the default recipe."""
    if spec == "default":
        return spec, TokenRouterRecipe()
    fields = dict(part.split("=", 1) for part in spec.split(","))
    return spec, TokenRouterRecipe.model_validate({k: yaml.safe_load(v) for k, v in fields.items()})


def main() -> None:
    ap = parser(__doc__, "workspace with seed, experts, generalist")
    ap.add_argument("--variant", action="append", default=[], help="'default' or field=value,... (repeat)")
    args = ap.parse_args()
    bench = open_bench(args)
    setup = bench.setup
    from moe_experts.routing.train_token import token_router_dir, train_token_router

    result = bench.record(generalist=bench.score(setup.workspace.model_dir(GENERALIST)),
                          oracle={c.domain: bench.score(setup.workspace.model_dir(c.name))[c.domain]
                                  for c in setup.registry.starters},
                          variants={})
    for spec in args.variant or ["default"]:
        name, recipe = variant(spec)
        started = time.monotonic()
        manifest = train_token_router(setup, recipe, TrainOptions(force=True), allow_dead_experts=True)
        result["variants"][name] = {"recipe": recipe.model_dump(mode="json"),
                                    "scores": bench.score(token_router_dir(setup.workspace.root)),
                                    "seconds": round(time.monotonic() - started, 1),
                                    "experts": manifest["experts"], "dead": manifest["health"]["dead"]}
    write_result(result, args.out, f"token_recipes-{result['date']}-{setup.preset.name}", shown={})
    domains = setup.registry.domains
    rows = [("generalist", result["generalist"]), ("oracle", result["oracle"]),
            *((f"token-moe, {n}", v["scores"]) for n, v in result["variants"].items())]
    print("| system | " + " | ".join(domains) + " | macro |\n|---|" + "---:|" * (len(domains) + 1))
    for name, scores in rows:
        print(f"| {name} | " + " | ".join(f"{scores[d]:.3f}" for d in domains)
              + f" | {sum(scores[d] for d in domains) / len(domains):.3f} |")


if __name__ == "__main__":
    main()
