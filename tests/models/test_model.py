"""The model against what the math guarantees: HF Llama, local attention, full attention, the reference op."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import infini_llama.layers.attention as attention_module
from infini_llama import InfiniLlamaConfig, InfiniLlamaForCausalLM, config_from_preset, parameter_groups
from infini_llama.layers import CausalSelfAttention, InfiniAttention
from infini_llama.ops import compressive_memory_reference

VOCAB = 97
CLOSED = -5.0  # hard_sigmoid(β) = clamp(0.2β + 0.5, 0, 1) = 0 for β <= -2.5: the memory is switched off


def micro(**overrides) -> InfiniLlamaConfig:
    base = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, segment_len=8, tie_word_embeddings=False,
    )  # fmt: skip
    return InfiniLlamaConfig(**{**base, **overrides})


def model(seed=0, dtype=torch.float64, **overrides) -> InfiniLlamaForCausalLM:
    torch.manual_seed(seed)
    return InfiniLlamaForCausalLM(micro(**overrides)).to(dtype).eval()


def tokens(B=2, T=29, seed=1):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("tied", [False, True])
def test_full_attention_equals_hf_llama(dtype, tol, tied):
    ours = model(attention="full", tie_word_embeddings=tied, dtype=dtype)
    c = ours.config
    hf_config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, rms_norm_eps=c.rms_norm_eps, tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, attn_implementation="sdpa",
    )  # fmt: skip
    hf = LlamaForCausalLM(hf_config).to(dtype).eval()
    hf.load_state_dict(ours.state_dict(), strict=True)  # same parameter names, one to one
    x = tokens(T=40)
    with torch.no_grad():
        expected = hf(x).logits
        got = ours(x).logits
    assert (got - expected).abs().max() / expected.abs().max() < tol


def test_closed_gate_is_segment_local_attention():
    # With g = 0 an Infini layer is causal attention run on each segment alone, RoPE restarting at 0.
    torch.manual_seed(0)
    infini = InfiniAttention(32, 4, 2, 8, 10000.0, segment_len=8, gate_init=CLOSED).double()
    full = CausalSelfAttention(32, 4, 2, 8, 10000.0).double()
    full.load_state_dict(infini.state_dict(), strict=False)
    x = torch.randn(2, 29, 32, dtype=torch.float64)
    out, _ = infini(x)
    expected = torch.cat([full(x[:, s : s + 8])[0] for s in range(0, 29, 8)], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_closed_gate_and_one_segment_is_full_attention():
    infini = model(attention="infini", segment_len=64, gate_init=CLOSED)
    full = model(attention="full")
    full.load_state_dict(infini.state_dict(), strict=False)
    x = tokens(T=64)
    with torch.no_grad():
        torch.testing.assert_close(infini(x).logits, full(x).logits, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("memory_rope", [False, True])
def test_model_with_fast_op_equals_model_with_reference_op(monkeypatch, update, memory_rope):
    m = model(memory_update=update, memory_rope=memory_rope, gate_init=1.0, bptt="full")
    x = tokens(T=37)
    out = m(x, labels=x)
    grads = torch.autograd.grad(out.loss, list(m.parameters()))
    monkeypatch.setattr(attention_module, "compressive_memory", compressive_memory_reference)
    ref = m(x, labels=x)
    ref_grads = torch.autograd.grad(ref.loss, list(m.parameters()))
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


CAUSALITY_ARMS = [
    pytest.param({"attention": "full"}, id="full"),
    pytest.param({"memory_update": "delta"}, id="infini-delta"),
    pytest.param({"memory_update": "linear"}, id="infini-linear"),
    pytest.param({"memory_update": "delta", "bptt": 2}, id="infini-delta-bptt2"),
]


@pytest.mark.parametrize("overrides", CAUSALITY_ARMS)
def test_causality_is_bit_exact_in_float32(overrides):
    # The memory open (g = 0.7), five segments of 8 and a short sixth one: changing token t leaves every logit
    # before t bit-identical, not only close.
    m = model(dtype=torch.float32, gate_init=1.0, **overrides)
    x = tokens(T=43)
    with torch.no_grad():
        a = m(x).logits
        for t in (5, 21, 30, 42):  # first segment, mid third, late fourth, the last token
            y = x.clone()
            y[:, t] = (y[:, t] + 1) % VOCAB
            b = m(y).logits
            assert torch.equal(a[:, :t], b[:, :t]), f"logits before token {t} moved"
            assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("bptt,expect_gradient", [("full", True), (3, True), (2, False), ("none", False)])
def test_backprop_through_memory(bptt, expect_gradient):
    # Loss on segment 3 (tokens 16..23) against segment 1's embeddings (tokens 0..7): the only path is the memory.
    # bptt=2 cuts the graph before segment 3 (segments 1-2 | 3-4); bptt=3 keeps segments 1-3 connected.
    m = model(gate_init=1.0, bptt=bptt)
    x = tokens(T=24)
    embeds = m.model.embed_tokens(x).detach().requires_grad_()
    logits = m(inputs_embeds=embeds).logits
    loss = torch.nn.functional.cross_entropy(logits[:, 16:23].reshape(-1, VOCAB), x[:, 17:24].reshape(-1))
    (grad,) = torch.autograd.grad(loss, embeds)
    seg1 = grad[:, :8]
    if expect_gradient:
        assert seg1.abs().sum() > 0
    else:
        assert torch.count_nonzero(seg1) == 0
    assert grad[:, 16:23].abs().sum() > 0


def test_bf16_autocast_long_sequence_is_finite_with_float32_memory():
    torch.manual_seed(0)
    m = InfiniLlamaForCausalLM(micro(segment_len=4, gate_init=1.0))
    x = tokens(B=1, T=64 * 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, labels=x)
        assert torch.isfinite(out.logits.float()).all() and torch.isfinite(out.loss)
        out.loss.backward()
        _, state = m.stream(x)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    memory = state[0].memory
    assert memory.M.dtype == torch.float32 and memory.z.dtype == torch.float32


def test_loss_is_shifted_next_token_cross_entropy():
    m = model()
    x = tokens(T=20)
    labels = x.clone()
    labels[:, :5] = -100
    out = m(x, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, 4:-1].reshape(-1, VOCAB), x[:, 5:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_paper_300m_parameter_count():
    with torch.device("meta"):
        m = InfiniLlamaForCausalLM(config_from_preset("paper-300m"))
    named = dict(m.named_parameters())
    gates = [n for n in named if n.endswith("memory_gate")]
    assert len(gates) == 12 and sum(named[n].numel() for n in gates) == 96
    assert sum(p.numel() for n, p in named.items() if n not in gates) == 302_015_488


def test_parameter_groups_put_gates_alone_without_decay():
    m = model()
    groups = {g["name"]: g for g in parameter_groups(m, weight_decay=0.1, gate_lr=0.01)}
    assert groups["gates"]["lr"] == 0.01 and groups["gates"]["weight_decay"] == 0.0
    assert len(groups["gates"]["params"]) == m.config.num_hidden_layers
    assert all(p.dim() == 1 for p in groups["no_decay"]["params"])
    assert groups["decay"]["weight_decay"] == 0.1
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(m.parameters()))
    assert "gates" not in {g["name"] for g in parameter_groups(model(attention="full"), 0.1, 0.01)}


def test_initialisation_follows_the_documented_scheme():
    torch.manual_seed(0)
    m = InfiniLlamaForCausalLM(config_from_preset("tiny", gate_init=0.3))
    std = 128**-0.5
    layer = m.model.layers[0]
    assert abs(layer.self_attn.q_proj.weight.std().item() - std) < 0.1 * std
    residual = std / (2 * 4) ** 0.5
    assert abs(layer.self_attn.o_proj.weight.std().item() - residual) < 0.1 * residual
    assert abs(layer.mlp.down_proj.weight.std().item() - residual) < 0.1 * residual
    assert torch.equal(layer.self_attn.memory_gate, torch.full((4,), 0.3))
    assert torch.equal(layer.input_layernorm.weight, torch.ones(128))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("segment_len", 0, "segment_len must be an integer >= 1"),
        ("num_key_value_heads", 3, "multiple of num_key_value_heads"),
        ("attention", "sliding", "attention must be one of"),
        ("memory_update", "gated", "memory_update must be one of"),
        ("gate_activation", "tanh", "gate_activation must be one of"),
        ("bptt", "some", "bptt must be"),
        ("bptt", 0, "bptt must be"),
        ("hidden_size", 2.5, "hidden_size must be an integer"),
    ],
)
def test_bad_config_values_raise(field, value, message):
    with pytest.raises(ValueError, match=message):
        micro(**{field: value})


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="unknown preset"):
        config_from_preset("huge")
    with pytest.raises(ValueError, match="unknown config field"):
        config_from_preset("tiny", segment_length=3)
    assert config_from_preset("tiny", segment_len=32).segment_len == 32


def test_gate_values_follow_the_activation():
    m = model(gate_init=1.0)
    assert torch.allclose(m.gate_values(), torch.full((2, 4), 0.7, dtype=torch.float64))
    m = model(gate_init=1.0, gate_activation="sigmoid")
    assert torch.allclose(m.gate_values(), torch.sigmoid(torch.ones(2, 4, dtype=torch.float64)))
    assert model(attention="full").gate_values() is None


def test_rope_tables_are_one_operator_in_a_traced_graph_on_a_cpu():
    # Written inline, the compiler fused cos and sin into the kernels applying them and evaluated them once per
    # element of q and k; as one operator the table is computed once per layer call. On CUDA they stay inline (see
    # `rope._cos_sin`; tests/train/test_gpu_compile.py holds compiled gradients to eager ones there).
    from torch.fx.experimental.proxy_tensor import make_fx

    from infini_llama.layers import rope_tables

    positions = torch.arange(40) % 16
    graph = make_fx(lambda p: rope_tables(p, 16, 10000.0, torch.float32))(positions).graph
    targets = [str(node.target) for node in graph.nodes if node.op == "call_function"]
    assert any("rope_cos_sin" in t for t in targets) and not any("cos.default" in t for t in targets), targets
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, 16, 2).double() / 16)
    angles = positions.double()[:, None] * inv_freq[None, :]
    cos, sin = rope_tables(positions, 16, 10000.0, torch.float32)
    assert torch.allclose(cos, torch.cat([angles.cos(), angles.cos()], -1).float(), atol=1e-6)
    assert torch.allclose(sin, torch.cat([angles.sin(), angles.sin()], -1).float(), atol=1e-6)
