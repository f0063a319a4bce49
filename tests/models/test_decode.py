"""The fixed-shape decoder equals `stream` token by token, and `fast_generate` equals transformers' `generate`."""

import itertools
import warnings

import pytest
import torch
from model_helpers import SEGMENT, T, make_model, tokens
from transformers import GenerationMixin

import infini_llama.models.fast_generate as fast_generate_module
from infini_llama.models.cache import InfiniCache
from infini_llama.models.decode import StaticDecoder
from infini_llama.models.fast_generate import decoder_for, fast_generate
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


@pytest.fixture(autouse=True)
def fresh_fallback_warnings(monkeypatch):
    """Each fallback warns once per process; every test starts with none reported yet."""
    monkeypatch.setattr(fast_generate_module, "_warned", set())


GENERATE_SETTINGS = [
    pytest.param(dict(do_sample=False), id="greedy"),
    pytest.param(dict(do_sample=True, temperature=0.7, top_k=10), id="temperature-topk"),
    pytest.param(dict(do_sample=True, top_p=0.9, top_k=0), id="topp"),
    pytest.param(dict(do_sample=False, repetition_penalty=1.3), id="greedy-repetition-penalty"),
    pytest.param(dict(do_sample=True, top_p=0.9, repetition_penalty=1.1), id="topp-repetition-penalty"),
    pytest.param(dict(do_sample=False, no_repeat_ngram_size=2), id="greedy-no-repeat-2gram"),
    pytest.param(dict(do_sample=True, no_repeat_ngram_size=3), id="sampled-no-repeat-3gram"),
    pytest.param(dict(do_sample=False, min_p=0.1, top_k=0), id="greedy-ignores-min-p"),
    pytest.param(dict(do_sample=True, min_p=0.05, top_k=0), id="min-p"),
    pytest.param(dict(do_sample=True, typical_p=0.9), id="typical-p"),
    pytest.param(dict(do_sample=False, suppress_tokens=[3, 5, 7]), id="suppress-tokens"),
    pytest.param(dict(do_sample=False, bad_words_ids=[[4], [8, 9]]), id="bad-words"),
]


@pytest.mark.parametrize("settings", GENERATE_SETTINGS)
def test_fast_generate_equals_transformers_generate(settings):
    m, x = make_model(), tokens(3, 21)
    torch.manual_seed(5)
    fast = fast_generate(m, x, max_new_tokens=30, **settings)
    assert fast is not None
    torch.manual_seed(5)
    assert torch.equal(fast, GenerationMixin.generate(m, x, max_new_tokens=30, **settings))


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("length", ["min_new_tokens", "min_length"])
def test_minimum_length_holds_back_the_end_of_sequence_as_generate_does(length, do_sample):
    m, x = make_model(), tokens(2, 19)
    free = GenerationMixin.generate(m, x, max_new_tokens=40, do_sample=False)
    eos = [int(free[0, 19 + 3]), int(free[1, 19 + 5])]  # early ends, which the minimum length pushes back
    settings = dict(max_new_tokens=40, do_sample=do_sample, eos_token_id=eos, pad_token_id=0)
    settings[length] = 12 if length == "min_new_tokens" else 19 + 12
    torch.manual_seed(3)
    fast = fast_generate(m, x, **settings)
    torch.manual_seed(3)
    assert torch.equal(fast, GenerationMixin.generate(m, x, **settings))


def test_streamer_gets_the_prompt_then_each_token_as_generate_gives_them():
    class Recorder:
        def __init__(self):
            self.parts, self.ended = [], False

        def put(self, value):
            self.parts.append(value.clone())

        def end(self):
            self.ended = True

    m, x = make_model(), tokens(1, 13)
    mine, theirs = Recorder(), Recorder()
    settings = dict(max_new_tokens=9, do_sample=False, repetition_penalty=1.2)
    fast = fast_generate(m, x, streamer=mine, **settings)
    slow = GenerationMixin.generate(m, x, streamer=theirs, **settings)
    assert torch.equal(fast, slow) and mine.ended and theirs.ended
    assert [p.tolist() for p in mine.parts] == [p.tolist() for p in theirs.parts]


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
    "settings,named",
    [
        pytest.param(dict(num_beams=2), "num_beams", id="beams"),
        pytest.param(dict(output_scores=True, return_dict_in_generate=True), "output_scores", id="scores"),
        pytest.param(dict(max_length=30), "max_new_tokens", id="no-max-new-tokens"),
        pytest.param(dict(stop_strings=["the"]), "stop_strings", id="stop-strings"),
    ],
)
def test_other_settings_are_left_to_transformers_with_a_warning_naming_them(settings, named):
    settings = {"max_new_tokens": 5, **settings} if "max_length" not in settings else settings
    with pytest.warns(UserWarning, match=f"{named}.*not covered by the fast decoder"):
        assert fast_generate(make_model(), tokens(), **settings) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per setting: the second call is silent
        assert fast_generate(make_model(), tokens(), **settings) is None


def test_other_arms_have_no_fast_path_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fast_generate(make_model(attention="full"), tokens(), max_new_tokens=5) is None


def test_padding_is_left_to_transformers_which_refuses_it():
    x = tokens()
    mask = torch.ones_like(x)
    mask[0, 0] = 0
    with pytest.warns(UserWarning, match="padding"):
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


def _failing_compile(*args, **kwargs):
    raise RuntimeError("no compiler here (forced by the test)")


def _compile_failing_at_first_call(fn, *args, **kwargs):
    def compiled(*call_args, **call_kwargs):
        raise RuntimeError("the backend failed (forced by the test)")

    return compiled


@pytest.mark.parametrize(
    "failure", [_failing_compile, _compile_failing_at_first_call], ids=["at-compile", "at-first-call"]
)
def test_a_failing_compile_decodes_eagerly_with_the_same_tokens(failure, monkeypatch):
    m, x = make_model(), tokens(2, 2 * SEGMENT + 3)
    expected = decode_greedily(StaticDecoder(m, batch_size=2), x, 12)
    monkeypatch.setattr(torch, "compile", failure)
    with pytest.warns(RuntimeWarning, match="compiling the decode step failed.*decoding eagerly"):
        decoder = StaticDecoder(m, batch_size=2, compile=True)
    assert not decoder.compiled
    assert all(step._compiled_call_impl is None for step in decoder.layers)
    assert torch.equal(decode_greedily(decoder, x, 12), expected)


def decode_greedily(decoder, x, new_tokens):
    decoder.load(None)
    for t in range(x.shape[1] - 1):
        decoder.step(x[:, t : t + 1])
    token, out = x[:, -1:], []
    for _ in range(new_tokens):
        token = decoder.step(token).argmax(dim=-1, keepdim=True)
        out.append(token)
    return torch.cat(out, dim=1)


def test_decoders_of_other_batch_sizes_stay_cached():
    m = make_model()
    one, two = decoder_for(m, 1), decoder_for(m, 2)
    assert decoder_for(m, 1) is one and decoder_for(m, 2) is two
    m.float()  # the weights moved: every decoder is rebuilt
    assert decoder_for(m, 1) is not one
    assert len(m._static_decoders) == 1


def test_compiled_decoders_of_several_batch_sizes_stay_compiled(monkeypatch):
    # Every decoder compiles the same layer-step code: past Dynamo's limit of entries per code object (default 8;
    # 2 layers x plain and committing step x 3 batch sizes = 12 here, more on a real model) a fullgraph compile
    # fails, and decoding would fall back to eager. The limit is set to 1 so that the decoder's own raised limit is
    # what keeps it compiled, whatever the default. Dynamo's eager backend keeps its guards and limits without
    # Inductor's compile time.
    import torch._dynamo.config as dynamo_config

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="eager", **kw))
    limits = {name: 1 for name in ("recompile_limit", "cache_size_limit") if hasattr(dynamo_config, name)}
    torch._dynamo.reset()
    m = make_model()
    with warnings.catch_warnings(), dynamo_config.patch(**limits):
        warnings.simplefilter("error", RuntimeWarning)
        decoders = {b: StaticDecoder(m, batch_size=b, compile=True) for b in (1, 2, 3)}
        for b, decoder in decoders.items():
            x = tokens(b, 2 * SEGMENT + 3)
            got = decode_greedily(decoder, x, 2 * SEGMENT)
            assert decoder.compiled
            assert torch.equal(got, decode_greedily(StaticDecoder(m, batch_size=b), x, 2 * SEGMENT))
    torch._dynamo.reset()


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_blocking_on_the_device_bans_what_transformers_bans(n):
    from transformers import NoRepeatNGramLogitsProcessor

    from infini_llama.models.fast_generate import NoRepeatNGramOnDevice

    g = torch.Generator().manual_seed(n)
    for length in (1, n - 1, n, 40):
        ids = torch.randint(0, 5, (3, max(length, 1)), generator=g)  # a small vocabulary: many repeated n-grams
        scores = torch.randn(3, 7, generator=g)
        expected = NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
        assert torch.equal(NoRepeatNGramOnDevice(n)(ids, scores.clone()), expected)
