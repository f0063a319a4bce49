"""CUDA-graph decoding against the eager stream, on a GPU (`pytest -m gpu`; CI has none, so it is deselected)."""

import warnings

import pytest
import torch
from transformers import GenerationMixin

from infini_llama import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.models.decode import StaticDecoder
from infini_llama.models.fast_generate import fast_generate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SEGMENT = 16


def make_model(dtype, **overrides):
    torch.manual_seed(0)
    config = config_from_preset("tiny", segment_len=SEGMENT, gate_init=1.0, **overrides)
    return InfiniLlamaForCausalLM(config).cuda().to(dtype).eval()


def decode(decoder, state, ids):
    decoder.load(state)
    return torch.stack([decoder.step(ids[:, t : t + 1]).clone() for t in range(ids.shape[1])], dim=1)


@pytest.mark.parametrize("overrides", [{}, dict(memory_update="linear", memory_rope=True)], ids=["delta", "linear"])
@pytest.mark.parametrize("prefix", [0, 7, 2 * SEGMENT], ids=lambda p: f"prefix{p}")
def test_graph_decoder_equals_the_stream_in_float32(overrides, prefix):
    m = make_model(torch.float32, **overrides)
    x = torch.randint(0, m.config.vocab_size, (2, prefix + 3 * SEGMENT + 5), device="cuda")
    expected, _ = m.stream(x)
    state = m.stream(x[:, :prefix])[1] if prefix else None
    graphed = StaticDecoder(m, batch_size=2)
    assert graphed.graphs
    got = decode(graphed, state, x[:, prefix:])
    rel = ((got - expected[:, prefix:]).norm() / expected.norm()).item()
    assert rel < 1e-5
    assert torch.equal(got.argmax(-1), expected[:, prefix:].argmax(-1))


def test_graph_decoder_equals_the_eager_decoder_in_bfloat16():
    m = make_model(torch.bfloat16)
    x = torch.randint(0, m.config.vocab_size, (3, 2 * SEGMENT + 9), device="cuda")
    state = m.stream(x[:, :11])[1]
    graphed = decode(StaticDecoder(m, batch_size=3), state, x[:, 11:]).float()
    eager = decode(StaticDecoder(m, batch_size=3, graphs=False), state, x[:, 11:]).float()
    assert ((graphed - eager).norm() / eager.norm()).item() < 2e-2
    assert (graphed.argmax(-1) == eager.argmax(-1)).float().mean() > 0.95


def test_fast_generate_equals_transformers_generate_on_cuda():
    m = make_model(torch.float32)
    x = torch.randint(0, m.config.vocab_size, (2, 3 * SEGMENT + 3), device="cuda")
    fast = fast_generate(m, x, max_new_tokens=2 * SEGMENT + 1, do_sample=False)
    assert torch.equal(fast, GenerationMixin.generate(m, x, max_new_tokens=2 * SEGMENT + 1, do_sample=False))


def _failing_compile(*args, **kwargs):
    raise RuntimeError("no compiler here (forced by the test)")


def test_a_failing_compile_decodes_eagerly_with_the_same_tokens(monkeypatch):
    m = make_model(torch.float32)
    x = torch.randint(0, m.config.vocab_size, (1, 2 * SEGMENT + 3), device="cuda")
    expected = GenerationMixin.generate(m, x, max_new_tokens=20, do_sample=False)
    monkeypatch.setattr(torch, "compile", _failing_compile)
    with pytest.warns(RuntimeWarning, match="decoding eagerly"):
        decoder = StaticDecoder(m, batch_size=1)
    assert not decoder.graphs and not decoder.compiled
    m.__dict__.pop("_static_decoders", None)
    with pytest.warns(RuntimeWarning, match="decoding eagerly"):
        got = m.generate(x, max_new_tokens=20, do_sample=False)
    assert torch.equal(got, expected)


def test_decoders_of_several_batch_sizes_are_kept():
    from infini_llama.models.fast_generate import decoder_for

    m = make_model(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a decoder that falls back to eager says so in one
        one, two, three = decoder_for(m, 1), decoder_for(m, 2), decoder_for(m, 3)
    assert decoder_for(m, 1) is one and decoder_for(m, 2) is two
    assert all(d.compiled and d.graphs for d in (one, two, three))
