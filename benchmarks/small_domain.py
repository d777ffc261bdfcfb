"""A small domain under a fixed schedule and under the data-aware one (issue 11's CPU reproduction).

From a workspace with corpora, a tokenizer and a seed, one domain's training
stream is cut to its first ``--documents`` documents, and its expert is branched
twice from the same seed: with the preset's branch budget as a fixed step count
(no repeats cap, no validation: the old schedule), and with the preset's
data-aware budget (repeats capped, validation, best weights kept). Both are
scored on the domain's validation documents next to the seed.

    python benchmarks/small_domain.py -w runs/tiny --domain medicine --documents 300 --steps 600
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.branch_recipes import variant_setup  # noqa: E402
from benchmarks.machine import write_result  # noqa: E402
from benchmarks.validation import open_bench, parser  # noqa: E402
from moe_experts.config import ValidationConfig  # noqa: E402
from moe_experts.data.tokenizer import stream_path  # noqa: E402
from moe_experts.modeling.checkpoints import load_checkpoint  # noqa: E402
from moe_experts.modeling.stages import SEED, Setup, TrainOptions, model_manifest, train_experts  # noqa: E402


def cut_stream(setup: Setup, domain: str, documents: int) -> int:
    """Keep the first ``documents`` documents of a domain's train stream; its tokens left."""
    tokenizer_hash = model_manifest(setup, SEED)["inputs"]["tokenizer_hash"]
    path = stream_path(setup.workspace, tokenizer_hash, domain, "train")
    stream = np.load(path, allow_pickle=False)
    eos = load_checkpoint(setup.workspace.model_dir(SEED)).tokenizer.eos_token_id
    ends = np.flatnonzero(stream == eos)
    kept = stream[: ends[documents - 1] + 1] if len(ends) >= documents else stream
    np.save(path, kept, allow_pickle=False)
    return int(len(kept))


def main() -> None:
    ap = parser(__doc__, "workspace with corpora, tokenizer, seed")
    ap.add_argument("--domain", default="medicine")
    ap.add_argument("--documents", type=int, default=300)
    ap.add_argument("--steps", type=int, default=None, help="the fixed schedule's steps [the preset's branch steps]")
    args = ap.parse_args()
    bench = open_bench(args, [args.domain])
    base, preset = bench.setup, bench.setup.preset
    card = base.registry.by_domain(args.domain)
    steps = args.steps or preset.branch_phase.steps
    fixed_phase = preset.branch_phase.model_copy(update={"steps": steps, "tokens": None, "epochs": None, "max_epochs": None})
    schedules = {
        "fixed": {"branch_phase": fixed_phase, "validation": ValidationConfig()},
        "data-aware": {"branch_phase": fixed_phase.model_copy(update={"max_epochs": preset.branch_phase.max_epochs}),
                       "validation": preset.validation},
    }
    result = bench.record(domain=args.domain, documents=args.documents,
                          seed=bench.score(base.workspace.model_dir(SEED))[args.domain], schedules={})
    for name, update in schedules.items():
        setup = variant_setup(base, args.workspace.parent / f"{args.workspace.name}-small-{name}", preset.branch_trunk)
        setup = Setup(workspace=setup.workspace, registry=setup.registry, preset=setup.preset.model_copy(update=update))
        result["train_tokens"] = cut_stream(setup, args.domain, args.documents)
        built = train_experts(setup, [args.domain], TrainOptions())[0]
        t = built.manifest["training"]
        result["schedules"][name] = {
            "bits_per_byte": bench.score(setup.workspace.model_dir(card.name), setup)[args.domain],
            "steps": t["steps"], "kept_step": t["kept_step"], "epochs": t["budget"]["epochs_per_domain"][args.domain],
            "validation": t["validation"], "seconds": t["seconds"],
        }
    shown = {"seed": result["seed"], "train_tokens": result["train_tokens"],
             **{n: {k: v for k, v in r.items() if k != "validation"} for n, r in result["schedules"].items()}}
    write_result(result, args.out, f"small_domain-{result['date']}-{preset.name}-{args.domain}-{args.documents}", shown=shown)


if __name__ == "__main__":
    main()
