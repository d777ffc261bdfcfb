"""The token-level MoE merge: Llama experts -> one Mixtral checkpoint, checked against the originals."""

from __future__ import annotations

import pytest
import torch

from moe_experts.errors import ConfigError
from moe_experts.routing.token_moe import MergeSpec, check_mergeable, init_gates, merge_experts, moe_input_hidden_states

SHAPE = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def llama(seed: int, **over):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**SHAPE, **over})).eval()


@pytest.fixture(scope="module")
def experts():
    return [llama(s) for s in range(4)]


@pytest.mark.parametrize("tied", [False, True])
def test_forced_gate_reproduces_each_experts_ffn(tied):
    experts = [llama(s, tie_word_embeddings=tied) for s in range(3)]
    moe = merge_experts(experts, experts, MergeSpec(experts=("a", "b", "c")))
    x = torch.randn(10, SHAPE["hidden_size"])  # (N, d)
    for layer in range(SHAPE["num_hidden_layers"]):
        block = moe.model.layers[layer].mlp.experts
        for i, expert in enumerate(experts):
            index = torch.full((10, 1), i, dtype=torch.long)  # every token to expert i, weight 1
            got = block(x, index, torch.ones(10, 1))
            want = expert.model.layers[layer].mlp(x)
            assert torch.allclose(got, want, atol=1e-5), (layer, i)


def test_identical_experts_merge_to_the_same_model():
    """Any routing over identical FFNs with weights summing to one is that FFN: the logits must not move."""
    one = llama(7)
    moe = merge_experts([one] * 4, [one] * 4, MergeSpec(experts=tuple("abcd")))
    init_gates(moe, [], mode="random", seed=3)
    ids = torch.randint(3, SHAPE["vocab_size"], (2, 20))
    with torch.no_grad():
        assert torch.allclose(moe(input_ids=ids).logits, one(input_ids=ids).logits, atol=1e-4)


def test_rest_is_the_average_or_the_seed(experts):
    avg = merge_experts(experts, experts, MergeSpec(experts=tuple("abcd")))
    q = "model.layers.1.self_attn.q_proj.weight"
    want = torch.stack([e.state_dict()[q] for e in experts]).mean(0)
    assert torch.allclose(avg.state_dict()[q], want)
    seed = llama(99)
    from_seed = merge_experts(experts, [seed], MergeSpec(experts=tuple("abcd"), merge_rest="seed"))
    assert torch.equal(from_seed.state_dict()["model.embed_tokens.weight"], seed.state_dict()["model.embed_tokens.weight"])


def test_save_and_load_give_identical_logits(experts, tmp_path):
    from transformers import AutoModelForCausalLM

    moe = merge_experts(experts, experts, MergeSpec(experts=tuple("abcd")))
    init_gates(moe, [], mode="random", seed=0)
    moe.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again).__name__ == "MixtralForCausalLM"
    ids = torch.randint(3, SHAPE["vocab_size"], (1, 16))
    with torch.no_grad():
        assert torch.equal(moe(input_ids=ids).logits, again(input_ids=ids).logits)
    out = again.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 20)


def test_hidden_gate_init_routes_each_experts_own_states_to_it(experts):
    moe = merge_experts(experts, experts, MergeSpec(experts=tuple("abcd")))
    # fake domain statistics: well-separated mean vectors per expert and layer
    means = [[torch.nn.functional.one_hot(torch.tensor(i), SHAPE["hidden_size"]).float() * 5 for _ in range(2)]
             for i in range(4)]
    init_gates(moe, means, mode="hidden")
    for layer in moe.model.layers:
        logits = torch.stack([m[0] for m in means]) @ layer.mlp.gate.weight.T  # (E, E)
        assert torch.equal(logits.argmax(dim=1), torch.arange(4))


def test_aux_loss_is_on_and_ignores_padding(experts):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    moe = merge_experts(experts, experts, MergeSpec(experts=tuple("abcd"), router_aux_loss_coef=0.01))
    init_gates(moe, [], mode="random", seed=1)
    ids = torch.randint(3, SHAPE["vocab_size"], (2, 12))
    out = moe(input_ids=ids, labels=ids, output_router_logits=True)
    plain = moe(input_ids=ids, labels=ids, output_router_logits=False)
    assert out.aux_loss is not None and float(out.aux_loss.detach()) > 0
    assert torch.allclose(out.loss, plain.loss + 0.01 * out.aux_loss, atol=1e-6)  # it enters the loss
    # padding: appending padded positions (mask 0) leaves the aux loss unchanged
    padded = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(2, 12), torch.zeros(2, 5)], dim=1).long()
    a = moe(input_ids=padded, attention_mask=mask, output_router_logits=True)
    logits = tuple(g.reshape(2, 17, -1)[:, :12].reshape(24, -1) for g in a.router_logits)
    unpadded = load_balancing_loss_func(logits, 4, 2)
    masked = load_balancing_loss_func(a.router_logits, 4, 2, attention_mask=mask)
    assert torch.allclose(masked, unpadded, atol=1e-6)


def test_moe_inputs_are_captured_per_layer(experts):
    states = moe_input_hidden_states(experts[0], torch.randint(3, 97, (2, 9)))
    assert len(states) == SHAPE["num_hidden_layers"] and states[0].shape == (2, 9, SHAPE["hidden_size"])


def test_refuses_other_shapes_and_architectures(experts):
    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    same = {str(i): Tok({"a": 0}) for i in range(2)}
    check_mergeable({"0": experts[0], "1": experts[1]}, same)
    with pytest.raises(ConfigError, match="do not share one shape.*intermediate_size=64"):
        check_mergeable({"0": experts[0], "1": llama(5, intermediate_size=64)}, same)
    with pytest.raises(ConfigError, match="Llama-architecture experts only"):
        check_mergeable({"0": experts[0], "1": torch.nn.Linear(2, 2)}, same)
    with pytest.raises(ConfigError, match="token-level MoE needs experts that share one vocabulary"):
        check_mergeable({"0": experts[0], "1": experts[1]}, {"0": Tok({"a": 0}), "1": Tok({"b": 0})})


def test_shipped_token_recipe_is_the_defaults_and_bad_fields_are_named(tmp_path):
    from moe_experts.recipes import TokenRouterRecipe, load_token_recipe
    from tests.conftest import REPO

    assert load_token_recipe(REPO / "router_training" / "token.yaml") == TokenRouterRecipe()
    bad = tmp_path / "token.yaml"
    bad.write_text("train: everything\n")
    with pytest.raises(ConfigError, match="train"):
        load_token_recipe(bad)


def test_learning_rate_defaults_to_the_experts_own(tmp_path):
    """Omitted, the peak learning rate is the preset's branch-phase rate; given, it is kept; bad values are named."""
    from moe_experts.config import load_preset
    from moe_experts.recipes import TokenRouterRecipe, load_token_recipe

    for name in ("tiny", "small"):
        preset = load_preset(name)
        assert TokenRouterRecipe().training.phase(preset).learning_rate == preset.branch_phase.learning_rate
    explicit = TokenRouterRecipe.model_validate({"training": {"steps": 50, "learning_rate": 3e-4}})
    phase = explicit.training.phase(load_preset("tiny"))
    assert (phase.learning_rate, phase.steps, phase.weight_decay) == (3e-4, 50, 0.0)
    bad = tmp_path / "token.yaml"
    bad.write_text("training: {steps: 10, warmup_steps: 10}\n")
    with pytest.raises(ConfigError, match="warmup_steps must be smaller than steps"):
        load_token_recipe(bad)


def test_a_merge_that_does_not_fit_is_refused_before_it_starts(experts, monkeypatch):
    import os

    from moe_experts.routing.token_moe import check_memory

    check_memory(experts[0].config, 4, 4)  # a few hundred kB: fits anywhere
    pages = {"SC_AVPHYS_PAGES": 10, "SC_PAGE_SIZE": 4096}  # 40 kB free
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    with pytest.raises(ConfigError, match=r"the merge needs about .* GiB of memory"):
        check_memory(experts[0].config, 4, 4)


def _force_gate(moe, expert: int) -> None:
    """Route every token of every layer to ``expert`` with weight one, whatever the gate's weights."""
    for layer in moe.model.layers:
        gate = layer.mlp.gate

        def forced(hidden, gate=gate):
            h = hidden.reshape(-1, gate.hidden_dim)
            index = torch.full((h.shape[0], gate.top_k), expert, dtype=torch.long)  # (N, k)
            weights = torch.zeros(h.shape[0], gate.top_k)
            weights[:, 0] = 1.0  # the other top-k slots, if any, weigh nothing
            return torch.zeros(h.shape[0], gate.num_experts), weights, index

        gate.forward = forced


def _branch_ffns(seed, n: int):
    """Copies of ``seed`` whose FFNs alone moved, as a shared-trunk (DEMix) branch leaves them."""
    import copy

    branches = []
    for i in range(n):
        branch = copy.deepcopy(seed)
        torch.manual_seed(100 + i)
        with torch.no_grad():
            for name, param in branch.named_parameters():
                if ".mlp." in name:
                    param.add_(torch.randn_like(param) * 0.05)
        branches.append(branch)
    return branches


@pytest.mark.parametrize("top_k", [1, 2])
def test_shared_trunk_merge_is_exact_whole_model(top_k):
    """With attention, norms and embeddings shared, a gate forced to expert i gives expert i's whole-model logits."""
    branches = _branch_ffns(llama(5), 3)
    moe = merge_experts(branches, branches, MergeSpec(experts=tuple("abc"), top_k=top_k))
    ids = torch.randint(3, SHAPE["vocab_size"], (2, 24))
    for i, branch in enumerate(branches):
        _force_gate(moe, i)
        with torch.no_grad():
            # equal up to float rounding: the fused gate_up matmul sums in another order than Llama's two
            assert torch.allclose(moe(input_ids=ids).logits, branch(input_ids=ids).logits, atol=1e-5, rtol=0), i


def test_full_branches_merge_is_not_any_expert():
    """The contrast that makes the test above meaningful: with diverged attention the average fits no expert."""
    experts = [llama(s) for s in range(3)]
    moe = merge_experts(experts, experts, MergeSpec(experts=tuple("abc"), top_k=1))
    ids = torch.randint(3, SHAPE["vocab_size"], (2, 24))
    _force_gate(moe, 0)
    with torch.no_grad():
        assert not torch.allclose(moe(input_ids=ids).logits, experts[0](input_ids=ids).logits, atol=1e-3)


def test_router_z_loss_is_the_mean_squared_logsumexp_over_layers(experts):
    """ST-MoE's z-loss, from the router logits the merged model returns; refused without them."""
    from types import SimpleNamespace

    from moe_experts.routing.token_moe import router_z_loss

    moe = merge_experts(experts, experts, MergeSpec(experts=tuple("abcd")))
    init_gates(moe, [], mode="random", seed=0)
    moe.config.output_router_logits = True
    ids = torch.randint(3, 97, (2, 8))
    out = moe(input_ids=ids)
    expected = sum(torch.logsumexp(layer, -1).pow(2).mean() for layer in out.router_logits) / len(out.router_logits)
    torch.testing.assert_close(router_z_loss(out), expected)
    scaled = SimpleNamespace(router_logits=tuple(3 * layer for layer in out.router_logits))
    assert router_z_loss(scaled) > router_z_loss(out)  # larger logits cost more
    with pytest.raises(ValueError, match="output_router_logits"):
        router_z_loss(SimpleNamespace(router_logits=None))


def test_new_recipe_fields_at_their_defaults_keep_the_fingerprint(tmp_path):
    """A router built before the z-loss and the gate learning rate existed is not stale; changing either is."""
    from moe_experts.recipes import TokenRouterRecipe, load_token_recipe

    default = TokenRouterRecipe()
    assert default.fingerprint() == "acf78d3d9f9d6a84"  # what every router built before these fields recorded
    assert TokenRouterRecipe(router_z_loss_coef=1e-3).fingerprint() != default.fingerprint()
    assert TokenRouterRecipe(gate_learning_rate_scale=10).fingerprint() != default.fingerprint()
    # an interrupted run's record (compared field by field on resume) leaves them out the same way
    assert not {"router_z_loss_coef", "gate_learning_rate_scale"} & set(default.recorded())
    assert TokenRouterRecipe(router_z_loss_coef=1e-3).recorded()["router_z_loss_coef"] == 1e-3
    for text, field in (("router_z_loss_coef: -1\n", "router_z_loss_coef"),
                        ("gate_learning_rate_scale: 0\n", "gate_learning_rate_scale")):
        bad = tmp_path / "token.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=field):
            load_token_recipe(bad)
