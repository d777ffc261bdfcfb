"""``moe-experts ask --router token``: answer with the token-level MoE, and show where each token went.

The MoE model routes inside every layer, so there is no single decision per
request. ``--explain`` runs one forward pass over prompt + answer with the
router logits returned and reports, for every generated token, the top-k
experts it went to in a chosen layer and the expert most layers sent it to
first (the majority over layers).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moe_experts.errors import MissingArtifactError, RequestError, StaleArtifactError
from moe_experts.inference.ask import Request
from moe_experts.inference.generate import Generation, GenerationSettings, generate
from moe_experts.modeling.checkpoints import LoadedModel
from moe_experts.modeling.stages import Setup


@dataclass(frozen=True)
class TokenRoute:
    token: str
    layer_experts: tuple[str, ...]  # the top-k experts in the chosen layer, most probable first
    majority: str  # the top-1 expert in most layers


@dataclass(frozen=True)
class TokenAnswer:
    request: Request
    generation: Generation
    layer: int
    routes: tuple[TokenRoute, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        g = self.generation
        out: dict[str, Any] = {
            "id": self.request.id,
            "router": "token",
            "text": g.text,
            "new_tokens": g.new_tokens,
            "finish_reason": g.finish_reason,
            "timings": {"routing_ms": None, "generation_ms": round(1000 * g.seconds, 3),
                        "tokens_per_second": round(g.new_tokens / g.seconds, 2) if g.seconds > 0 else None},
        }
        if self.routes:
            out["explain"] = {"layer": self.layer, "tokens": [
                {"token": r.token, "experts": list(r.layer_experts), "majority": r.majority} for r in self.routes]}
        return out


def check_token_ask(setup: Setup, *, layer: int | None = None) -> None:
    """Refuse a missing or stale token-level MoE and a ``layer`` it does not have, before its weights load."""
    folder = _token_moe_dir(setup)  # the live version, resolved once: its manifest and config agree
    if layer is None:
        return
    try:
        n_layers = int(json.loads((folder / "config.json").read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # an unreadable config is load_checkpoint's to report; the layer is checked again after loading
    _check_layer(layer, n_layers)


def load_token_moe(setup: Setup, device: str = "cpu") -> tuple[LoadedModel, list[str]]:
    """The token-level MoE and its expert names (in MoE order), or a clear error when it is not built.

    Every file comes from one published version, even while the router is retrained."""
    from moe_experts.routing.token_artifact import load_token_router

    loaded = load_token_router(setup.workspace.root, check=lambda manifest: _check_expert_set(setup, manifest),
                               device=device)
    assert loaded.manifest is not None
    return loaded, list(loaded.manifest["experts"])


def route_tokens(model: Any, token_ids: Sequence[int], start: int, experts: list[str], layer: int,
                 tokenizer: Any) -> tuple[TokenRoute, ...]:
    """Where tokens ``start:`` of ``token_ids`` went: top-k in ``layer`` and the majority top-1 over layers."""
    import torch

    ids = torch.tensor([list(token_ids)], device=next(model.parameters()).device)  # (1, T)
    with torch.no_grad():
        out = model(input_ids=ids, output_router_logits=True)
    k = model.config.num_experts_per_tok
    per_layer = [logits.float().softmax(-1) for logits in out.router_logits]  # [(T, E)] * L
    routes = []
    for t in range(start, len(token_ids)):
        top = per_layer[layer][t].topk(k).indices.tolist()
        firsts = Counter(int(p[t].argmax()) for p in per_layer)
        routes.append(TokenRoute(token=tokenizer.decode([token_ids[t]]), layer_experts=tuple(experts[i] for i in top),
                                 majority=experts[firsts.most_common(1)[0][0]]))
    return tuple(routes)


def ask_token(setup: Setup, requests: Sequence[Request], *, overrides: dict[str, Any] | None = None,
              explain: bool = False, layer: int | None = None, batch_size: int = 8) -> list[TokenAnswer]:
    """Answer every request with the token-level MoE (batched), with per-token routes when explaining."""
    from moe_experts.inference.generate import encode_prompt, fit_context

    loaded, experts = load_token_moe(setup)
    n_layers = loaded.model.config.num_hidden_layers
    chosen = n_layers - 1 if layer is None else layer
    _check_layer(chosen, n_layers)
    settings = GenerationSettings.from_card(setup.registry.fallback.generation, **(overrides or {}))
    outs = generate(loaded.model, loaded.tokenizer, [r.text for r in requests], settings, batch_size=batch_size)
    answers = []
    for request, g in zip(requests, outs):
        routes: tuple[TokenRoute, ...] = ()
        if explain:
            _, budget = fit_context([loaded.model], settings.max_new_tokens)
            prompt_ids, _ = encode_prompt(loaded.tokenizer, request.text, budget)
            routes = route_tokens(loaded.model, [*prompt_ids, *g.token_ids], len(prompt_ids), experts, chosen,
                                  loaded.tokenizer)
        answers.append(TokenAnswer(request, g, chosen, routes))
    return answers


def _token_moe_dir(setup: Setup) -> Path:
    """The live token router's folder, after refusing a missing one or one built for another expert set."""
    from moe_experts.routing.token_artifact import BUILD, token_manifest, token_router_dir, token_router_home

    folder = token_router_dir(setup.workspace.root)
    manifest = token_manifest(folder)
    if manifest is None:
        raise MissingArtifactError(f"no token-level router in {token_router_home(setup.workspace.root)}", hint=BUILD)
    _check_expert_set(setup, manifest)
    return folder


def _check_expert_set(setup: Setup, manifest: dict[str, Any]) -> None:
    from moe_experts.routing.token_artifact import REBUILD
    from moe_experts.routing.train_token import expert_set_change

    change = expert_set_change(setup, manifest)
    if change is not None:
        raise StaleArtifactError(change, hint=REBUILD)


def _check_layer(layer: int, n_layers: int) -> None:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise RequestError(f"`layer` must be between 0 and {n_layers - 1} (the MoE has {n_layers} layers), got {layer!r}",
                           hint=f"use {n_layers - 1} (the last layer, the default) or leave it out")
