"""Several Llama experts in one forward pass: each row of a batch is computed with its own expert's weights.

A server that batches per expert makes batches only as large as the requests one expert has waiting; with
five experts, eight concurrent requests made batches of 3.8 on average. The experts share one architecture
(every one is branched from the same seed), so their weights stack: ``StackedExperts`` keeps each linear
layer as one ``(E, in, out)`` tensor, sorts a batch's rows into per-expert groups padded to the largest
group, and multiplies every group by its own expert's matrix in one batched product (``torch.bmm``), the
segmented matrix product that multi-adapter servers use. Embeddings, norms and the output head are
gathered per row; attention is per row anyway. Rows of different experts never mix: a row's logits are
its expert's, to float rounding (``tests/unit/test_stacked.py`` checks this against each expert's own
forward and its greedy decoding).

``StackedExperts.bind(experts)`` gives a model-like object for ``inference.batch.decode_batch``: it takes
``input_ids``, ``attention_mask``, ``position_ids`` and ``cache`` like a transformers causal LM and returns
``logits`` and ``cache``; the cache remembers each row's expert and drops rows with the batch
(``batch_select_indices``), so finished requests leave as they do with one model.

Only plain Llama experts stack (``stack_problem`` says why others do not): same shapes, SiLU MLP, no
biases, the same rotary embedding. The stacked weights are a copy: the experts' memory twice over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "max_position_embeddings", "rms_norm_eps")


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def stack_problem(models: Sequence[Any]) -> str | None:
    """None when ``models`` can be stacked, else why not (in words)."""
    import torch

    if len(models) < 2:
        return "fewer than two experts"
    first = models[0]
    for m in models:
        c = m.config
        if getattr(c, "model_type", None) != "llama":
            return f"only Llama experts stack, and one is '{getattr(c, 'model_type', None)}'"
        if getattr(c, "hidden_act", "silu") != "silu" or getattr(c, "attention_bias", False) \
                or getattr(c, "mlp_bias", False):
            return "an expert has biases or an activation other than SiLU"
        for f in SHAPE_FIELDS:
            if getattr(c, f, None) != getattr(first.config, f, None):
                return f"the experts differ in {f}"
        if _head_dim(c) != _head_dim(first.config):
            return "the experts differ in head_dim"
        if next(m.parameters()).dtype != next(first.parameters()).dtype or m.device != first.device:
            return "the experts differ in dtype or device"
        rope, rope0 = m.model.rotary_emb, first.model.rotary_emb
        if getattr(rope, "attention_scaling", 1.0) != getattr(rope0, "attention_scaling", 1.0) \
                or not torch.equal(rope.inv_freq, rope0.inv_freq):
            return "the experts differ in their rotary embedding"
    return None


def stackable_groups(models: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The largest set of the named models that stack together (empty when no two do), and for each model left
    out, why (what keeps it from stacking with that set)."""
    names = list(models)
    best: list[str] = []
    for anchor in names:
        group = [n for n in names if n == anchor or stack_problem([models[anchor], models[n]]) is None]
        if len(group) > len(best) and (len(group) > 1 and stack_problem([models[n] for n in group]) is None):
            best = group
    if not best:
        return [], {n: stack_problem(list(models.values())) or "fewer than two experts" for n in names}
    anchor = models[best[0]]
    return best, {n: stack_problem([anchor, models[n]]) or "" for n in names if n not in best}


@dataclass
class _Layer:
    ln1: torch.Tensor  # (E, H)
    qkv: torch.Tensor  # (E, H, (nh + 2 kvh) d)
    o: torch.Tensor  # (E, nh d, H)
    ln2: torch.Tensor  # (E, H)
    gate_up: torch.Tensor  # (E, H, 2 F)
    down: torch.Tensor  # (E, F, H)


@dataclass
class _Weights:
    embed: torch.Tensor  # (E, V, H)
    head: torch.Tensor  # (E, H, V)
    norm: torch.Tensor  # (E, H)
    layers: list[_Layer]

    @property
    def experts(self) -> int:
        return int(self.embed.shape[0])

    def select(self, experts: torch.Tensor) -> _Weights:
        """The weights of these experts only, in this order (a copy)."""
        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, experts)

        return _Weights(pick(self.embed), pick(self.head), pick(self.norm),
                        [_Layer(**{f.name: pick(getattr(layer, f.name)) for f in fields(_Layer)}) for layer in self.layers])


class StackedExperts:
    """The weights of ``models`` (same-shaped Llamas), stacked along a leading expert axis."""

    def __init__(self, models: Sequence[Any]) -> None:
        import torch

        problem = stack_problem(models)
        if problem is not None:
            raise ValueError(f"these experts cannot be stacked: {problem}")
        first = models[0]
        c = first.config
        self.config, self.generation_config = c, getattr(first, "generation_config", None)
        self.device = first.device
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, _head_dim(c)
        self.eps = float(c.rms_norm_eps)
        self.rotary = first.model.rotary_emb

        def stack(get: Any) -> torch.Tensor:
            return torch.stack([get(m).detach() for m in models]).contiguous()

        with torch.no_grad():
            layers = []
            for i in range(c.num_hidden_layers):
                def layer(m: Any, i: int = i) -> Any:
                    return m.model.layers[i]

                layers.append(_Layer(
                    ln1=stack(lambda m: layer(m).input_layernorm.weight),
                    qkv=stack(lambda m: torch.cat([layer(m).self_attn.q_proj.weight, layer(m).self_attn.k_proj.weight,
                                                   layer(m).self_attn.v_proj.weight]).T),
                    o=stack(lambda m: layer(m).self_attn.o_proj.weight.T),
                    ln2=stack(lambda m: layer(m).post_attention_layernorm.weight),
                    gate_up=stack(lambda m: torch.cat([layer(m).mlp.gate_proj.weight, layer(m).mlp.up_proj.weight]).T),
                    down=stack(lambda m: layer(m).mlp.down_proj.weight.T),
                ))
            self.weights = _Weights(embed=stack(lambda m: m.model.embed_tokens.weight),  # (E, V, H)
                                    head=stack(lambda m: m.lm_head.weight.T),  # (E, H, V)
                                    norm=stack(lambda m: m.model.norm.weight),  # (E, H)
                                    layers=layers)

    @property
    def experts(self) -> int:
        """How many experts are stacked."""
        return self.weights.experts

    def bind(self, experts: Sequence[int]) -> BoundStack:
        """A model-like object whose batch rows use these experts (indices into the stacked models), row by row.

        Only the experts the batch uses take part: their weights are picked once here, so a batch of two
        experts multiplies two groups, not one per stacked expert.
        """
        import torch

        for e in experts:
            if not 0 <= e < self.experts:
                raise ValueError(f"expert index {e} is out of range: {self.experts} experts are stacked")
        used = sorted(set(experts))
        local = {e: i for i, e in enumerate(used)}
        weights = self.weights if len(used) == self.experts else \
            self.weights.select(torch.tensor(used, dtype=torch.long, device=self.device))
        return BoundStack(self, weights, [local[e] for e in experts])

    # ------------------------------------------------------------------ the forward pass
    def forward(self, w: _Weights, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                cache: StackedCache) -> torch.Tensor:
        """Logits of each row's last position, (B, V), with the weights ``w`` (``cache`` indexes into them);
        ``cache`` is extended with this call's keys and values."""
        import torch

        groups = cache.groups()
        b, t = input_ids.shape
        x = w.embed[cache.experts_tensor[:, None], input_ids]  # (B, T, H)
        cos, sin = self.rotary(x, position_ids)  # (B, T, d) each
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d): broadcast over heads
        keys = attention_mask.shape[1]
        # additive mask: causal within this call's T positions, padding from the attention mask; finite, so a
        # padded query row that sees no key gives a uniform (never NaN) softmax that nothing reads
        allowed = attention_mask[:, None, None, :].bool()  # (B, 1, 1, L)
        if t > 1:
            causal = torch.ones((t, keys), dtype=torch.bool, device=x.device).tril(diagonal=keys - t)  # (T, L)
            allowed = allowed & causal[None, None]  # (B, 1, T, L)
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed,
                                                                                      torch.finfo(x.dtype).min)
        nh, kvh, d = self.heads, self.kv_heads, self.head_dim
        scale = d ** -0.5
        for i, layer in enumerate(w.layers):
            h = _rms(x, layer.ln1, cache.experts_tensor, self.eps)  # (B, T, H)
            qkv = groups.matmul(h, layer.qkv)  # (B, T, (nh + 2 kvh) d)
            q, k, v = qkv.split([nh * d, kvh * d, kvh * d], dim=-1)
            q = q.view(b, t, nh, d).transpose(1, 2)  # (B, nh, T, d)
            k = k.view(b, t, kvh, d).transpose(1, 2)  # (B, kvh, T, d)
            v = v.view(b, t, kvh, d).transpose(1, 2)  # (B, kvh, T, d)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            k, v = cache.update(i, k, v)  # (B, kvh, L, d) each
            if kvh != nh:
                k, v = k.repeat_interleave(nh // kvh, dim=1), v.repeat_interleave(nh // kvh, dim=1)
            scores = torch.matmul(q, k.transpose(2, 3)) * scale + mask  # (B, nh, T, L)
            attn = torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)  # (B, nh, T, d)
            x = x + groups.matmul(attn.transpose(1, 2).reshape(b, t, nh * d), layer.o)  # (B, T, H)
            h = _rms(x, layer.ln2, cache.experts_tensor, self.eps)
            gate, up = groups.matmul(h, layer.gate_up).chunk(2, dim=-1)  # (B, T, F) each
            x = x + groups.matmul(torch.nn.functional.silu(gate) * up, layer.down)  # (B, T, H)
        last = _rms(x[:, -1:], w.norm, cache.experts_tensor, self.eps)  # (B, 1, H)
        return groups.matmul(last, w.head)[:, 0]  # (B, V)


class _Groups:
    """A batch's rows sorted into per-expert groups, each padded to the largest group: ``matmul`` multiplies
    every row by its own expert's matrix in one ``torch.bmm``."""

    def __init__(self, experts: torch.Tensor, n_experts: int) -> None:
        import torch

        counts = torch.bincount(experts, minlength=n_experts)  # (E,)
        self.size = int(counts.max())
        order = torch.argsort(experts, stable=True)  # (B,): rows grouped by expert
        starts = torch.cumsum(counts, 0) - counts  # (E,)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=experts.device) - starts[experts[order]]
        self.slot = experts * self.size + rank  # (B,): each row's place in the padded (E * G) layout
        self.n_experts = n_experts

    def matmul(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """(B, T, in) x (E, in, out) -> (B, T, out), row b with w[expert of b]."""
        import torch

        b, t, width = x.shape
        padded = x.new_zeros((self.n_experts * self.size, t, width))  # (E G, T, in)
        padded[self.slot] = x
        out = torch.bmm(padded.view(self.n_experts, self.size * t, width), w)  # (E, G T, out)
        return out.view(self.n_experts * self.size, t, -1)[self.slot]  # (B, T, out)


def _rms(x: torch.Tensor, weight: torch.Tensor, experts: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm with each row's own expert's weight (as ``LlamaRMSNorm``: statistics in float32)."""
    import torch

    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight[experts][:, None, :] * h.to(dtype)  # (B, T, H)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StackedCache:
    """Keys and values per layer, (B, kvh, L, d), and each row's expert; rows leave with ``batch_select_indices``."""

    def __init__(self, experts: Sequence[int], n_experts: int, device: Any) -> None:
        import torch

        self.experts_tensor = torch.tensor(list(experts), dtype=torch.long, device=device)  # (B,)
        self.n_experts = n_experts
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor | None] = []
        self._groups: _Groups | None = None

    def groups(self) -> _Groups:
        if self._groups is None:
            self._groups = _Groups(self.experts_tensor, self.n_experts)
        return self._groups

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]

    def batch_select_indices(self, index: torch.Tensor) -> None:
        self.experts_tensor = self.experts_tensor[index]
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]
        self._groups = None


@dataclass
class StackedOutput:
    logits: torch.Tensor  # (B, 1, V): the last position only
    cache: StackedCache


class BoundStack:
    """``StackedExperts`` with each batch row's expert fixed: called like a transformers causal LM by
    ``inference.batch.decode_batch`` (``cache`` in, ``logits`` and ``cache`` out; only the last position)."""

    def __init__(self, stack: StackedExperts, weights: _Weights, experts: list[int]) -> None:
        self.stack, self.weights, self.experts = stack, weights, experts  # experts: indices into ``weights``
        self.config, self.generation_config, self.device = stack.config, stack.generation_config, stack.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                use_cache: bool = True, cache: StackedCache | None = None, logits_to_keep: int = 1) -> StackedOutput:
        if input_ids.shape[0] != (len(self.experts) if cache is None else len(cache.experts_tensor)):
            raise ValueError(f"{input_ids.shape[0]} rows but {len(self.experts)} experts bound")
        if cache is None:
            cache = StackedCache(self.experts, self.weights.experts, self.device)
        logits = self.stack.forward(self.weights, input_ids, attention_mask, position_ids, cache)  # (B, V)
        return StackedOutput(logits=logits[:, None], cache=cache)

    __call__ = forward
