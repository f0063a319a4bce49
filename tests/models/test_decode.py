"""The fixed-shape decoder equals `stream` token by token, and `fast_generate` equals transformers' `generate`."""

import itertools

import pytest
import torch
from model_helpers import SEGMENT, T, make_model, tokens
from transformers import GenerationMixin

from infini_llama.models.cache import InfiniCache
from infini_llama.models.decode import StaticDecoder
from infini_llama.models.fast_generate import fast_generate
from infini_llama.models.hf_compat import GENERATE_CACHE_NAME

TOL = 1e-12  # float64: a masked softmax over the whole buffer against one over the filled part


CASES = [
    pytest.param(dict(memory_update=u, memory_rope=r, num_key_value_heads=kv), id=f"{u}-rope{int(r)}-kv{kv}")
    for u, r, kv in itertools.product(["delta", "linear"], [False, True], [4, 2])
]


@pytest.mark.parametrize("prefix", [0, 5, SEGMENT, 2 * SEGMENT + 3], ids=lambda p: f"prefix{p}")
@pytest.mark.parametrize("overrides", CASES)
def test_decoder_steps_equal_the_stream(overrides, prefix):
    m, x = make_model(**overrides), tokens()
    expected, expected_states = m.stream(x)
    state = m.stream(x[:, :prefix])[1] if prefix else None
    decoder = StaticDecoder(m, batch_size=2)
    decoder.load(state)
    got = torch.stack([decoder.step(x[:, t : t + 1]).clone() for t in range(prefix, T)], dim=1)
    scale = expected.abs().max()
    assert ((got - expected[:, prefix:]).abs().max() / scale).item() < TOL
    assert torch.equal(got.argmax(-1), expected[:, prefix:].argmax(-1))
    for mine, theirs in zip(decoder.states(), expected_states, strict=True):
        assert mine.keys.shape == theirs.keys.shape == (2, m.config.num_key_value_heads, T % SEGMENT, 8)
        for a, b in ((mine.memory.M, theirs.memory.M), (mine.memory.z, theirs.memory.z), (mine.values, theirs.values)):
            torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


def test_decoder_state_has_one_shape_at_any_length():
    m = make_model()
    decoder = StaticDecoder(m, batch_size=1)
    shapes = {name: buffer.shape for name, buffer in decoder.layers[0].named_buffers()}
    for t in range(5 * SEGMENT + 1):
        decoder.step(tokens(1, 1, seed=t))
    assert {name: buffer.shape for name, buffer in decoder.layers[0].named_buffers()} == shapes
    assert decoder.filled == 1


GENERATE_SETTINGS = [
    pytest.param(dict(do_sample=False), id="greedy"),
    pytest.param(dict(do_sample=True, temperature=0.7, top_k=10), id="temperature-topk"),
    pytest.param(dict(do_sample=True, top_p=0.9, top_k=0), id="topp"),
]


@pytest.mark.parametrize("settings", GENERATE_SETTINGS)
def test_fast_generate_equals_transformers_generate(settings):
    m, x = make_model(), tokens(3, 21)
    torch.manual_seed(5)
    fast = fast_generate(m, x, max_new_tokens=30, **settings)
    torch.manual_seed(5)
    assert torch.equal(fast, GenerationMixin.generate(m, x, max_new_tokens=30, **settings))


def test_fast_generate_stops_where_generate_stops_and_leaves_the_same_cache():
    m, x = make_model(), tokens(2, 19)
    free = GenerationMixin.generate(m, x, max_new_tokens=40, do_sample=False)
    # end-of-sequence: a token each row produces, at different steps
    eos = [int(free[0, 19 + 4]), int(free[1, 19 + 22])]
    expected = GenerationMixin.generate(m, x, max_new_tokens=40, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert expected.shape[1] < free.shape[1]
    fast = fast_generate(m, x, max_new_tokens=40, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(fast, expected)
    # continuing a streamed prompt: the cache ends holding the same state as after transformers' loop
    _, state = m.stream(x[:, :11])
    theirs, mine = InfiniCache(state, seen_tokens=11), InfiniCache(state, seen_tokens=11)
    cache = {GENERATE_CACHE_NAME: theirs}
    GenerationMixin.generate(m, x, **cache, max_new_tokens=40, do_sample=False, eos_token_id=eos)
    fast_generate(m, x, cache=mine, max_new_tokens=40, do_sample=False, eos_token_id=eos)
    assert mine.get_seq_length() == theirs.get_seq_length()
    for a, b in zip(mine.states, theirs.states, strict=True):
        torch.testing.assert_close(a.memory.M, b.memory.M, rtol=TOL, atol=TOL)
        torch.testing.assert_close(a.keys, b.keys, rtol=TOL, atol=TOL)


@pytest.mark.parametrize(
    "model_overrides,settings",
    [
        pytest.param({}, dict(repetition_penalty=1.3), id="repetition-penalty"),
        pytest.param({}, dict(num_beams=2), id="beams"),
        pytest.param({}, dict(output_scores=True, return_dict_in_generate=True), id="scores"),
        pytest.param({}, dict(max_length=30), id="no-max-new-tokens"),
        pytest.param(dict(attention="full"), {}, id="full-attention"),
    ],
)
def test_other_settings_are_left_to_transformers(model_overrides, settings):
    settings = {"max_new_tokens": 5, **settings} if "max_length" not in settings else settings
    assert fast_generate(make_model(**model_overrides), tokens(), **settings) is None


def test_padding_is_left_to_transformers_which_refuses_it():
    x = tokens()
    mask = torch.ones_like(x)
    mask[0, 0] = 0
    assert fast_generate(make_model(), x, attention_mask=mask, max_new_tokens=3) is None


def test_decoder_refuses_what_it_cannot_decode():
    with pytest.raises(ValueError, match="Infini-attention models"):
        StaticDecoder(make_model(attention="full"), batch_size=1)
    with pytest.raises(ValueError, match="need the model on a CUDA device"):
        StaticDecoder(make_model(), batch_size=1, graphs=True)
    decoder = StaticDecoder(make_model(), batch_size=2)
    with pytest.raises(ValueError, match=r"ids of shape \(2, 1\)"):
        decoder.step(tokens(1, 1))
    with pytest.raises(ValueError, match="batch size 3"):
        decoder.load(make_model().stream(tokens(3, 4))[1])
