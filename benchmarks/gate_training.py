"""Token-level router training throughput: tokens/s and model FLOPs utilisation (MFU).

Target (token-level router issue): report gate-training throughput in tokens/s
and MFU against the GPU's bf16 peak, for the workspace's token router recipe
(``--train all``, BTX fine-tuning, by default; ``--train gates`` freezes everything else).

MFU = model FLOPs per token x tokens/s / peak FLOP/s, with 6N model FLOPs per
token (N active parameters) when every weight trains and 4N when only the gates
do (the backward pass still runs through every layer to reach the gates, but
frozen weights get no weight gradients). The peak is the GPU's dense bf16
datasheet number; on a CPU, which has none, the fp32 GEMM throughput measured
on the same machine. The run merges the experts and trains for ``--steps`` steps through
the same code as ``moe-experts train-router --kind token``, in a scratch copy of
the router folder, so the workspace's router is not touched.

    python benchmarks/gate_training.py -w runs/small --steps 50 [--train all]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import BF16_PEAK, cpu_model, measured_gemm_flops, usable_cores, write_result  # noqa: E402
from moe_experts.config import load_preset, load_registry  # noqa: E402
from moe_experts.recipes import TokenRouterRecipe, load_token_recipe  # noqa: E402
from moe_experts.modeling.stages import Setup  # noqa: E402
from moe_experts.routing.token_artifact import token_router_dir  # noqa: E402
from moe_experts.workspace import Workspace, read_json  # noqa: E402

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", default="runs/small")
    ap.add_argument("--cards", default="experts")
    ap.add_argument("--preset", default=None, help="preset name or YAML [the one the workspace was opened with]")
    ap.add_argument("--recipe", type=Path, default=Path("router_training/token.yaml") if Path("router_training/token.yaml").is_file() else None)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--train", choices=["gates", "all"], default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from moe_experts.modeling.flops import model_size
    from moe_experts.routing.train_token import train_token_router

    source = Workspace(Path(args.workspace).absolute())
    preset = load_preset(args.preset or read_json(source.root / "workspace.json")["preset"])
    if preset.fingerprint() != read_json(source.root / "workspace.json")["preset_fingerprint"]:
        sys.exit(f"error: {source.root} was opened with another preset than {preset.name}; pass --preset")
    recipe = load_token_recipe(args.recipe)
    warmup = min(recipe.training.warmup_steps, args.steps // 10)
    update = {"training": {**recipe.training.model_dump(), "steps": args.steps, "warmup_steps": warmup},
              "dead_expert_share": 0.0, **({"train": args.train} if args.train else {})}
    recipe = TokenRouterRecipe.model_validate({**recipe.model_dump(), **update})
    with tempfile.TemporaryDirectory() as tmp:
        # a scratch workspace that shares everything but the routers and checkpoints
        scratch = Workspace(Path(tmp) / "ws")
        scratch.root.mkdir()
        for part in source.root.iterdir():
            if part.name not in ("routers", "checkpoints", "reports"):
                (scratch.root / part.name).symlink_to(part)
        setup = Setup(workspace=scratch, registry=load_registry(Path(args.cards)), preset=preset)
        manifest = train_token_router(setup, recipe)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(token_router_dir(scratch.root))  # the live version, not routers/token/
        shutil.rmtree(scratch.root / "routers", ignore_errors=True)
    t = manifest["training"]
    active = model_size(config, preset.seq_len).active_parameters
    tokens_per_s = t["tokens"] / t["seconds"]
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else cpu_model()
    if cuda:
        peak, peak_kind = next((v for k, v in BF16_PEAK.items() if k in device), None), "bf16 datasheet (dense)"
    else:  # no datasheet number for an arbitrary CPU: the fp32 GEMM throughput measured here
        peak, peak_kind = measured_gemm_flops(torch), "fp32 GEMM measured on this machine"
    # model FLOPs per token: forward 2N, backward 2N for the activation gradients, and 2N more for the
    # weight gradients when every weight trains (frozen weights get none; the gates' own are negligible)
    flops_per_token = (6 if recipe.train == "all" else 4) * active
    result = {
        "benchmark": "gate_training",
        "date": dt.date.today().isoformat(),
        "machine": {"device": device, "cores": usable_cores(), "torch": torch.__version__},
        "preset": preset.name,
        "train": recipe.train,
        "steps": t["steps"],
        "tokens": t["tokens"],
        "seconds": t["seconds"],
        "tokens_per_second": round(tokens_per_s, 1),
        "active_parameters": active,
        "trainable_parameters": t["trainable_parameters"],
        "model_flops_per_token": flops_per_token,
        "peak_flops": peak,
        "peak_kind": peak_kind,
        "mfu": round(flops_per_token * tokens_per_s / peak, 4) if peak else None,
        "health_dead": manifest["health"]["dead"],
    }
    write_result(result, args.out, f"gate_training-{result['date']}-{preset.name}")


if __name__ == "__main__":
    main()
