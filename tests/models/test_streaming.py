"""Streaming equals batched: any chunking of a sequence gives the logits of one forward pass, and an Infini
model's state stays the size of one memory plus one unfinished segment."""

import itertools

import pytest
import torch
from model_helpers import SEGMENT, T, make_model, tokens
from transformers import LogitsProcessor, LogitsProcessorList

from infini_llama import InfiniLlamaForCausalLM
from infini_llama.layers import InfiniState, KVState
from infini_llama.models.cache import InfiniCache, state_tensors
from infini_llama.models.hf_compat import output_cache

TOL = 1e-12  # float64: chunking changes only the order of a few sums


def chunk_sizes(pattern: str, total: int) -> list[int]:
    """Chunk lengths covering `total` tokens: all 1, all 7, all one segment, or a mix crossing boundaries."""
    cycle = {"1": [1], "7": [7], "segment": [SEGMENT], "mixed": [3, 8, 1, 13, 2, 9]}[pattern]
    sizes, done = [], 0
    for size in itertools.cycle(cycle):
        if done >= total:
            return sizes
        sizes.append(min(size, total - done))
        done += sizes[-1]


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


PATTERNS = ["1", "7", "segment", "mixed"]
INFINI_CASES = [
    pytest.param(dict(memory_update=u, memory_rope=r, num_key_value_heads=kv), id=f"{u}-rope{int(r)}-kv{kv}")
    for u, r, kv in itertools.product(["delta", "linear"], [False, True], [4, 2])
]
FULL_CASES = [pytest.param(dict(attention="full", num_key_value_heads=kv), id=f"full-kv{kv}") for kv in (4, 2)]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("overrides", INFINI_CASES + FULL_CASES)
def test_stream_in_chunks_equals_one_forward(overrides, pattern):
    m = make_model(**overrides)
    x = tokens()
    with torch.no_grad():
        expected = m(x).logits
    parts, state, start = [], None, 0
    for size in chunk_sizes(pattern, T):
        logits, state = m.stream(x[:, start : start + size], state)
        parts.append(logits)
        start += size
    assert relative_error(torch.cat(parts, dim=1), expected) < TOL


@pytest.mark.parametrize("overrides", [INFINI_CASES[0], FULL_CASES[1]])
def test_forward_with_infini_cache_in_chunks_equals_one_forward(overrides):
    m = make_model(**overrides)
    x = tokens()
    cache = InfiniCache()
    with torch.no_grad():
        expected = m(x).logits
        parts = []
        for start in range(0, T, 6):
            out = m(x[:, start : start + 6], cache=cache, use_cache=True)
            assert output_cache(out) is cache  # updated in place, as transformers caches are
            parts.append(out.logits)
    assert relative_error(torch.cat(parts, dim=1), expected) < TOL
    assert cache.get_seq_length() == T


def test_streaming_leaves_the_previous_state_untouched():
    # stream() returns new states; an old state can be continued twice (e.g. two continuations of one prompt).
    m = make_model()
    x = tokens()
    _, state = m.stream(x[:, :20])
    first, _ = m.stream(x[:, 20:], state)
    second, _ = m.stream(x[:, 20:], state)
    assert torch.equal(first, second)


def test_infini_state_holds_only_the_unfinished_segment():
    m = make_model()
    x = tokens()
    state = None
    for t in range(T):
        _, state = m.stream(x[:, t : t + 1], state)
        for layer_state in state:
            assert isinstance(layer_state, InfiniState)
            assert layer_state.keys.shape[2] == (t + 1) % SEGMENT
    _, kv_state = make_model(attention="full").stream(x)
    assert all(isinstance(s, KVState) and s.keys.shape[2] == T for s in kv_state)


class CacheSizeRecorder(LogitsProcessor):
    """Records the number of elements the cache holds at every decoding step, leaving the scores as they are."""

    def __init__(self, cache: InfiniCache):
        self.cache, self.sizes = cache, []

    def __call__(self, input_ids, scores):
        self.sizes.append(self.cache.numel())
        return scores


def generation_cache_sizes(m: InfiniLlamaForCausalLM, new_tokens: int) -> list[int]:
    cache = InfiniCache()
    recorder = CacheSizeRecorder(cache)
    m.generate(
        tokens(length=5), cache=cache, max_new_tokens=new_tokens, do_sample=False,
        logits_processor=LogitsProcessorList([recorder]),
    )  # fmt: skip
    return recorder.sizes


def test_generation_cache_stays_bounded_for_infini_and_grows_for_full_attention():
    new_tokens = 12 * SEGMENT  # a context 12 segments long
    m = make_model()
    c = m.config
    B, D = 2, c.head_dim
    # Per layer: memory M (D × D) and z (D) per KV head, plus keys and values of < SEGMENT tokens.
    bound = c.num_hidden_layers * B * c.num_key_value_heads * (D * D + D + 2 * (SEGMENT - 1) * D)
    sizes = generation_cache_sizes(m, new_tokens)
    assert len(sizes) == new_tokens
    assert max(sizes) == bound  # reached whenever the segment is one token short of full ...
    assert sizes[-SEGMENT:] == sizes[-2 * SEGMENT : -SEGMENT]  # ... and periodic, not growing

    full_sizes = generation_cache_sizes(make_model(attention="full"), new_tokens)
    per_token = c.num_hidden_layers * B * c.num_key_value_heads * 2 * D
    assert torch.diff(torch.tensor(full_sizes)).tolist() == [per_token] * (new_tokens - 1)


def test_cache_tensors_match_the_states():
    m = make_model()
    _, state = m.stream(tokens())
    cache = InfiniCache(state, seen_tokens=T)
    assert cache.states == state and cache.get_seq_length() == T
    assert cache.numel() == sum(t.numel() for s in state for t in state_tensors(s))
