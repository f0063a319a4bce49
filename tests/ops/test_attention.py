"""Segment attention against a per-segment loop of plain softmax attention, in float64."""

import math

import pytest
import torch

from infini_llama.ops import causal_attention, segment_attention


def _softmax_attention(q, k, v):
    """The textbook definition, one head group at a time: softmax(QKᵀ/√d + causal mask) V."""
    T, D = q.shape[-2:]
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


def _reference(q, k, v, segment_len):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    T = q.shape[2]
    return torch.cat(
        [
            _softmax_attention(q[:, :, s : s + segment_len], k[:, :, s : s + segment_len], v[:, :, s : s + segment_len])
            for s in range(0, T, segment_len)
        ],
        dim=2,
    )


@pytest.mark.parametrize("T", [1, 7, 8, 29])
@pytest.mark.parametrize("heads", [(2, 2), (4, 2), (4, 1)], ids=lambda h: f"H{h[0]}/{h[1]}")
def test_segment_attention_equals_per_segment_loop(T, heads):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads[0], T, 6, generator=g, dtype=torch.float64)
    k = torch.randn(2, heads[1], T, 6, generator=g, dtype=torch.float64)
    v = torch.randn(2, heads[1], T, 5, generator=g, dtype=torch.float64)
    out = segment_attention(q, k, v, 8)
    assert out.shape == (2, heads[0], T, 5)
    torch.testing.assert_close(out, _reference(q, k, v, 8), rtol=1e-12, atol=1e-12)


def test_one_segment_is_causal_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 20, 4, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(segment_attention(q, k, v, 32), causal_attention(q, k, v))
    torch.testing.assert_close(causal_attention(q, k, v), _reference(q, k, v, 20))


def test_causal_attention_with_cache_aligns_queries_to_the_end():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 20, 4, generator=g, dtype=torch.float64) for _ in range(3))
    full = causal_attention(q, k, v)
    torch.testing.assert_close(causal_attention(q[:, :, 13:], k, v), full[:, :, 13:])
    torch.testing.assert_close(causal_attention(q[:, :, 19:], k, v), full[:, :, 19:])


def test_segment_len_must_be_positive():
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(ValueError, match="segment_len must be >= 1"):
        segment_attention(q, q, q, 0)
