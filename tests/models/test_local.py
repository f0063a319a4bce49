"""The segment-local control arm (`attention="local"`): Infini-attention's local half with no memory and no gate.
It is defined by two equalities, checked in float64: Infini-attention with the gate closed (g = 0) on the same
weights, and full causal attention when one segment covers the sequence."""

import pytest
import torch
from model_helpers import SEGMENT, T, make_model, tokens

from infini_llama import InfiniLlamaForCausalLM
from infini_llama.layers import LocalState
from infini_llama.models import GATE_PARAMETER, parameter_groups
from infini_llama.models.cache import InfiniCache
from infini_llama.models.decode import StaticDecoder

TOL = 1e-12  # float64: the same sums, at most in another order


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def local_copy(model: InfiniLlamaForCausalLM, **overrides) -> InfiniLlamaForCausalLM:
    """A local-attention model with `model`'s weights (all of them but the gates, which it has none of)."""
    config = model.config.to_dict() | {"attention": "local", **overrides}
    local = InfiniLlamaForCausalLM(type(model.config).from_dict(config)).double().eval()
    missing, unexpected = local.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(name.endswith(GATE_PARAMETER) for name in unexpected)
    return local


@pytest.mark.parametrize("activation", ["hard_sigmoid", "sigmoid"])
@pytest.mark.parametrize("kv", [4, 2], ids=["kv4", "kv2"])
def test_local_equals_infini_with_the_gate_closed(activation, kv, one_thread):
    infini = make_model(gate_activation=activation, num_key_value_heads=kv)
    local = local_copy(infini)
    with torch.no_grad():
        for layer in infini.model.layers:
            layer.self_attn.memory_gate.fill_(float("-inf"))  # g = 0 under both activations
        assert bool((infini.gate_values() == 0).all())
        x = tokens()  # T = 45: a last, unfinished segment
        assert relative_error(local(x).logits, infini(x).logits) < TOL


def test_local_with_one_segment_is_full_attention(one_thread):
    full = make_model(attention="full", num_key_value_heads=2)
    local = local_copy(full, segment_len=T)
    x = tokens()
    with torch.no_grad():
        assert relative_error(local(x).logits, full(x).logits) < TOL


def test_local_arm_has_no_gate_or_memory(one_thread):
    local = make_model(attention="local")
    names = [name for name, _ in local.named_parameters()]
    assert not any(name.endswith(GATE_PARAMETER) or "memory" in name for name in names)
    assert local.gate_values() is None
    assert [group["name"] for group in parameter_groups(local, 0.1, gate_lr=0.05)] == ["decay", "no_decay"]
    # Every parameter of the local arm is one of the Infini arm's, with the same shape.
    infini = make_model()
    shapes = {name: p.shape for name, p in infini.named_parameters()}
    assert all(shapes[name] == p.shape for name, p in local.named_parameters())
    assert len(shapes) - len(names) == infini.config.num_hidden_layers  # one β per layer


def test_local_config_round_trip(tmp_path, one_thread):
    model = make_model(attention="local")
    model.save_pretrained(tmp_path)
    loaded = InfiniLlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert loaded.config.attention == "local" and loaded.config.segment_len == SEGMENT
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize("sizes", [[1] * T, [7] * 6 + [3], [3, 8, 1, 13, 2, 9, 9]], ids=["1", "7", "mixed"])
def test_local_stream_in_chunks_equals_one_forward(sizes, one_thread):
    model = make_model(attention="local", num_key_value_heads=2)
    x = tokens()
    with torch.no_grad():
        expected = model(x).logits
    parts, state, start = [], None, 0
    for size in sizes:
        logits, state = model.stream(x[:, start : start + size], state)
        parts.append(logits)
        start += size
        # The state is the unfinished segment alone.
        assert all(isinstance(s, LocalState) and s.keys.shape[2] == start % SEGMENT for s in state)
    assert start == T
    assert relative_error(torch.cat(parts, dim=1), expected) < TOL


def test_local_generate_is_greedy_decoding(one_thread):
    model = make_model(attention="local")
    prompt = tokens(B=1, length=13)
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, cache=InfiniCache())
    ids = prompt
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, ids)
    with pytest.raises(ValueError, match="attention='local'"):
        StaticDecoder(model, batch_size=1)
