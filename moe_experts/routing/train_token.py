"""``moe-experts train-router --kind token``: merge the experts into a Mixtral MoE, train its gates, check its health.

Steps: load every expert (and the seed when the recipe includes it or takes the
shared weights from it), refuse a set that cannot be merged, merge
(``token_moe.merge_experts``), initialise the gates from each expert's mean
hidden state on its own domain, train on the uniform training mixture with the
load-balancing loss on (``output_router_logits=True``), then measure per layer
how each domain's validation tokens spread over the experts. A dead expert (under
``dead_expert_share`` of a layer's tokens) stops the save unless allowed.

The result is ``routers/token/``: a ``MixtralForCausalLM`` checkpoint with the
tokenizer, a manifest (what it was merged from, the recipe, training, health),
and ``health.json`` / ``health.md``, published as one version folder that
readers see whole or not at all (``token_artifact``).
"""

from __future__ import annotations

import logging
import math
import shutil
from typing import Any

import numpy as np

from moe_experts.recipes import TokenRouterRecipe
from moe_experts.errors import TrainingError
from moe_experts.modeling.stages import SEED, Setup, TrainOptions, data_inputs, expert_weights_id, load_expert
from moe_experts.modeling.train import BlockDataset, device_kind, prepare_checkpoint_dir, train_causal_lm
from moe_experts.routing.token_artifact import publish_token_router, token_manifest, token_router_dir
from moe_experts.routing.token_moe import (
    GATE_SUFFIX,
    MergeSpec,
    check_memory,
    check_mergeable,
    init_gates,
    merge_experts,
    router_z_loss,
)

logger = logging.getLogger(__name__)

TOKEN_ROUTER = "token-router"  # checkpoint stage name


def token_inputs(setup: Setup, recipe: TokenRouterRecipe) -> dict[str, Any]:
    """What a token router is built from; a router whose manifest records other inputs is stale."""
    names = [*setup.registry.names, *([SEED] if recipe.include_seed or recipe.merge_rest == "seed" else [])]
    data = data_inputs(setup)
    return {"experts": {n: expert_weights_id(setup, n) for n in names}, "recipe": recipe.fingerprint(),
            "preset": setup.preset.fingerprint(), "tokenizer_hash": data.tokenizer_hash, "corpus_hash": data.corpus_hash}


def expert_set_change(setup: Setup, manifest: dict[str, Any] | None = None) -> str | None:
    """How the token router's experts differ from the cards' (an expert added or removed since), or None.

    A changed expert set makes the merged checkpoint stale whatever the recipe: its gates have one row per
    expert it was built with, and its merged attention averaged those experts' weights. ``manifest``: the
    router's, when the caller has read it already (default: the live router's).
    """
    if manifest is None:
        manifest = token_manifest(token_router_dir(setup.workspace.root))
        if manifest is None:
            return None
    built = [n for n in manifest.get("experts", []) if n != SEED]
    now = list(setup.registry.names)
    if built == now:
        return None
    parts = [f"added since: {', '.join(n for n in now if n not in built)}" if any(n not in built for n in now) else "",
             f"removed since: {', '.join(n for n in built if n not in now)}" if any(n not in now for n in built) else ""]
    return f"the token router was built for {', '.join(built)} ({'; '.join(p for p in parts if p)})"


def _run_inputs(inputs: dict[str, Any], recipe: TokenRouterRecipe) -> dict[str, Any]:
    """What an interrupted training run must share with its resume: the router's inputs, with the recipe
    field by field (bar the health check's, which runs after training)."""
    health = frozenset({"health_blocks_per_domain", "dead_expert_share"})
    return {**inputs, "recipe": recipe.recorded(exclude=health)}


def token_router_status(setup: Setup, recipe: TokenRouterRecipe) -> tuple[str, list[str]]:
    """('missing' | 'current' | 'stale', what differs)."""
    manifest = token_manifest(token_router_dir(setup.workspace.root))
    if manifest is None:
        return "missing", []
    recorded = manifest.get("inputs", {})
    current = token_inputs(setup, recipe)
    diffs = [f"{k}: built from {recorded.get(k)!r}, now {current[k]!r}" for k in current if recorded.get(k) != current[k]]
    return ("stale" if diffs else "current"), diffs


def _blocks(stream: np.ndarray, seq_len: int, n: int) -> Any:
    """``n`` evenly spaced blocks of ``seq_len`` tokens from a token stream: (n, seq_len)."""
    import torch

    n = max(1, min(n, len(stream) // seq_len))
    starts = np.linspace(0, len(stream) - seq_len, n).astype(np.int64)
    return torch.from_numpy(np.stack([np.asarray(stream[s : s + seq_len], dtype=np.int64) for s in starts]))


def mean_moe_inputs(model: Any, blocks: Any, batch_size: int) -> list[Any]:
    """Per layer, the mean of the FFN's input hidden state over every token of ``blocks``: [(d,)] * L."""
    from moe_experts.routing.token_moe import moe_input_hidden_states

    sums: list[Any] = []
    count = 0
    for b in range(0, len(blocks), batch_size):
        states = moe_input_hidden_states(model, blocks[b : b + batch_size].to(next(model.parameters()).device))
        flat = [h.reshape(-1, h.shape[-1]).float().sum(dim=0).cpu() for h in states]
        sums = flat if not sums else [a + f for a, f in zip(sums, flat)]
        count += states[0].shape[0] * states[0].shape[1]
    return [s / max(count, 1) for s in sums]


def router_health(moe: Any, blocks_by_domain: dict[str, Any], experts: list[str], batch_size: int,
                  dead_share: float) -> dict[str, Any]:
    """Per layer: each expert's share of every domain's tokens (top-k slots), routing entropy, dead experts."""
    import torch

    n_layers, n_experts, k = moe.config.num_hidden_layers, moe.config.num_local_experts, moe.config.num_experts_per_tok
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    counts = {d: np.zeros((n_layers, n_experts)) for d in blocks_by_domain}
    entropy_sum, tokens, aux_sum, batches = np.zeros(n_layers), 0, 0.0, 0
    device = next(moe.parameters()).device
    with torch.no_grad():
        for domain, blocks in blocks_by_domain.items():
            for b in range(0, len(blocks), batch_size):
                out = moe(input_ids=blocks[b : b + batch_size].to(device), output_router_logits=True)
                for layer, logits in enumerate(out.router_logits):  # (B*T, E)
                    probs = torch.softmax(logits.float(), dim=-1)
                    chosen = probs.topk(k, dim=-1).indices.reshape(-1).cpu().numpy()
                    counts[domain][layer] += np.bincount(chosen, minlength=n_experts)
                    entropy_sum[layer] += float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).sum())
                tokens += out.router_logits[0].shape[0]
                aux_sum += float(load_balancing_loss_func(out.router_logits, n_experts, k))
                batches += 1
    total = sum(counts.values())  # (L, E)
    share = total / total.sum(axis=1, keepdims=True)
    layers = []
    for layer in range(n_layers):
        dead = [experts[e] for e in range(n_experts) if share[layer, e] < dead_share]
        layers.append({
            "layer": layer,
            "share": {experts[e]: round(float(share[layer, e]), 4) for e in range(n_experts)},
            "share_by_domain": {d: {experts[e]: round(float(c[layer, e] / c[layer].sum()), 4) for e in range(n_experts)}
                                for d, c in counts.items()},
            "mean_token_entropy": round(entropy_sum[layer] / max(tokens, 1) / math.log(n_experts), 4),  # 1 = uniform
            "dead": dead,
        })
    # the load-balancing loss on validation: top_k when tokens and probabilities are spread evenly
    return {"experts": experts, "top_k": k, "dead_expert_share": dead_share,
            "aux_loss": round(aux_sum / max(batches, 1), 4), "tokens_per_domain":
            {d: int(c[0].sum() // k) for d, c in counts.items()}, "layers": layers,
            "dead": sorted({e for row in layers for e in row["dead"]})}


def health_table(health: dict[str, Any]) -> str:
    """Plain text: per layer and domain, each expert's share of the tokens (top-k slots)."""
    experts = health["experts"]
    width = max(len(e) for e in experts) + 2
    lines = [f"token share per expert (top-{health['top_k']} slots; dead under {health['dead_expert_share']:.0%}; "
             "entropy 1 = uniform routing)",
             "layer  domain      " + "".join(e.rjust(width) for e in experts) + "   entropy"]
    for row in health["layers"]:
        for domain, share in [*row["share_by_domain"].items(), ("all", row["share"])]:
            cells = "".join(f"{share[e]:.1%}".rjust(width) for e in experts)
            tail = f"   {row['mean_token_entropy']:.3f}" if domain == "all" else ""
            mark = "   DEAD: " + ", ".join(row["dead"]) if domain == "all" and row["dead"] else ""
            lines.append(f"{row['layer']:>5}  {domain:<10}  {cells}{tail}{mark}")
    return "\n".join(lines)


def train_token_router(setup: Setup, recipe: TokenRouterRecipe, opts: TrainOptions = TrainOptions(), *,
                       allow_dead_experts: bool = False) -> dict[str, Any]:
    """Merge, initialise, train and check the token-level MoE; write routers/token/; its manifest."""
    import torch

    from moe_experts.data.tokenizer import load_stream

    ws, preset = setup.workspace, setup.preset
    names = list(setup.registry.names)
    expert_names = [*names, *([SEED] if recipe.include_seed else [])]
    loaded = {n: load_expert(setup, n) for n in dict.fromkeys([*expert_names, *([SEED] if recipe.merge_rest == "seed" else [])])}
    check_mergeable({n: m.model for n, m in loaded.items()}, {n: m.tokenizer for n, m in loaded.items()})
    check_memory(loaded[names[0]].model.config, len(expert_names), len(loaded))
    inputs = token_inputs(setup, recipe)  # read once: the run record and the manifest
    data = data_inputs(setup)
    domain_of = {c.name: c.domain for c in setup.registry.cards}
    train = {d: load_stream(ws, data.tokenizer_hash, d, "train") for d in setup.registry.domains}
    val = {d: load_stream(ws, data.tokenizer_hash, d, "val") for d in setup.registry.domains}

    means = []
    if recipe.gate_init == "hidden":
        mixture = torch.cat([_blocks(s, preset.seq_len, recipe.gate_init_blocks_per_domain) for s in train.values()])
        for name in expert_names:
            blocks = mixture if name == SEED else _blocks(train[domain_of[name]], preset.seq_len,
                                                          recipe.gate_init_blocks_per_domain)
            means.append(mean_moe_inputs(loaded[name].model, blocks, preset.batch_size))
        logger.info("token router: gate rows from mean hidden states on %d blocks a domain",
                    recipe.gate_init_blocks_per_domain)
    rest = [loaded[SEED].model] if recipe.merge_rest == "seed" else [loaded[n].model for n in expert_names]
    spec = MergeSpec(experts=tuple(expert_names), merge_rest=recipe.merge_rest, top_k=recipe.top_k,
                     router_aux_loss_coef=recipe.router_aux_loss_coef)
    moe = merge_experts([loaded[n].model for n in expert_names], rest, spec)
    init_gates(moe, means, mode=recipe.gate_init, seed=recipe.seed)
    tokenizer = loaded[names[0]].tokenizer
    del loaded, rest
    moe.config.output_router_logits = True  # the load-balancing loss enters the training loss
    for name, param in moe.named_parameters():
        param.requires_grad = recipe.train == "all" or name.endswith(GATE_SUFFIX)
    trainable = sum(p.numel() for p in moe.parameters() if p.requires_grad)
    moe.train()

    ckpt_dir = ws.checkpoints_dir(TOKEN_ROUTER)
    resume_from = prepare_checkpoint_dir(ckpt_dir, what="token router", resume=opts.resume, restart=opts.restart,
                                         inputs=_run_inputs(inputs, recipe))
    phase = recipe.training.phase(preset)
    length = phase.steps * preset.batch_size * preset.gradient_accumulation_steps
    dataset = BlockDataset(list(train.values()), preset.seq_len, length, seed=recipe.seed)
    logger.info("token router: training %s of %s parameters (%s) for %d steps at peak lr %g (gates x%g), top-%d of %d "
                "experts, aux coef %g, z-loss coef %g", f"{trainable:,}", f"{sum(p.numel() for p in moe.parameters()):,}",
                recipe.train, phase.steps, phase.learning_rate, recipe.gate_learning_rate_scale, recipe.top_k,
                len(expert_names), recipe.router_aux_loss_coef, recipe.router_z_loss_coef)
    coef = recipe.router_z_loss_coef
    result, _ = train_causal_lm(moe, dataset, phase=phase, preset=preset, ckpt_dir=ckpt_dir,
                                resume_from=resume_from, seed=recipe.seed, what="token router",
                                callbacks=opts.callbacks,
                                lr_scales={GATE_SUFFIX: recipe.gate_learning_rate_scale}
                                if recipe.gate_learning_rate_scale != 1.0 else None,
                                extra_loss=(lambda outputs: coef * router_z_loss(outputs)) if coef > 0 else None)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # training finished: nothing left to resume
    moe.eval()
    moe.config.output_router_logits = False  # inference and saved default: no aux term
    for p in moe.parameters():
        p.requires_grad = True

    health_blocks = {d: _blocks(s, preset.seq_len, recipe.health_blocks_per_domain) for d, s in val.items()}
    health = router_health(moe, health_blocks, expert_names, preset.batch_size, recipe.dead_expert_share)
    print_health = health_table(health)
    logger.debug("token router health:\n%s", print_health)
    if health["dead"] and not allow_dead_experts:
        raise TrainingError(
            f"dead expert(s) after training: {', '.join(health['dead'])} receive under "
            f"{recipe.dead_expert_share:.0%} of a layer's tokens; the router was not saved\n{print_health}",
            hint="raise router_aux_loss_coef or the training steps in the recipe, or save anyway (allow_dead_experts)",
        )
    return publish_token_router(moe, tokenizer, ws.root, {
        "name": "token-router",
        "kind": "token",
        "inputs": inputs,
        "experts": expert_names,
        "merge": {"rest": recipe.merge_rest, "gate_init": recipe.gate_init, "include_seed": recipe.include_seed},
        "recipe": recipe.model_dump(mode="json"),
        "training": {**vars(result), "learning_rate": phase.learning_rate, "trained": recipe.train,
                     "trainable_parameters": trainable,
                     "device": device_kind()},
        "health": health,
    }, health=health, health_text=print_health)
