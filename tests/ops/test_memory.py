"""The fast compressive memory against the float64 per-segment reference: values and gradients."""

import itertools

import pytest
import torch

import infini_llama.ops.memory as memory_module
from infini_llama.ops import MemoryState, compressive_memory, compressive_memory_reference
from infini_llama.ops.segment_loop import prefers_segment_loop

SEGMENT = 8
D, DV = 6, 5  # D != Dv on purpose: a swapped dimension cannot pass


@pytest.fixture(autouse=True, params=["batched", "segment_loop"])
def fast_path(request, monkeypatch):
    """Every test of the fast op runs on both of its paths: all segments at once, and the segment loop that
    `compressive_memory` picks for large inputs on CPU (forced here at these small sizes)."""
    loop = request.param == "segment_loop"
    monkeypatch.setattr(memory_module, "prefers_segment_loop", lambda q, segment_len: loop)
    return request.param


def _inputs(B, Hq, Hkv, T, *, initial, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, T, D, generator=g, dtype=dtype)
    k = torch.randn(B, Hkv, T, D, generator=g, dtype=dtype)
    v = torch.randn(B, Hkv, T, DV, generator=g, dtype=dtype)
    state = None
    if initial:
        M = torch.randn(B, Hkv, D, DV, generator=g, dtype=dtype)
        z = torch.rand(B, Hkv, D, generator=g, dtype=dtype) + 0.5  # a real memory has z > 0
        state = MemoryState(M, z)
    return q, k, v, state


def _leaves(q, k, v, state):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    st = None if state is None else MemoryState(*(t.clone().requires_grad_() for t in state))
    return leaves, st


def _run(fn, q, k, v, state, update, detach_every=None):
    (q, k, v), st = _leaves(q, k, v, state)
    out, final = fn(
        q, k, v, SEGMENT, update=update, initial_state=st, output_final_state=True, detach_every=detach_every
    )
    g = torch.Generator().manual_seed(1)
    # A random linear functional of every output, so each gradient entry is exercised.
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    loss = loss + (final.M * torch.randn(final.M.shape, generator=g, dtype=out.dtype)).sum()
    loss = loss + (final.z * torch.randn(final.z.shape, generator=g, dtype=out.dtype)).sum()
    wrt = [q, k, v] + ([] if st is None else list(st))
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return out, final, grads


def _rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


GRID = list(
    itertools.product(
        ["linear", "delta"],
        [1, SEGMENT - 1, SEGMENT, 3 * SEGMENT + 5],
        [(1, 1), (2, 1), (4, 1), (4, 2)],
        [False, True],
    )
)


@pytest.mark.parametrize(
    "update,T,heads,initial",
    GRID,
    ids=[f"{u}-T{T}-H{hq}/{hkv}-{'init' if i else 'empty'}" for u, T, (hq, hkv), i in GRID],
)
def test_fast_equals_reference(update, T, heads, initial):
    q, k, v, state = _inputs(2, heads[0], heads[1], T, initial=initial)
    out_f, fin_f, grads_f = _run(compressive_memory, q, k, v, state, update)
    out_r, fin_r, grads_r = _run(compressive_memory_reference, q, k, v, state, update)
    assert out_f.shape == (2, heads[0], T, DV) and out_f.dtype == torch.float64
    assert _rel_err(out_f, out_r) < 1e-12
    assert _rel_err(fin_f.M, fin_r.M) < 1e-12 and _rel_err(fin_f.z, fin_r.z) < 1e-12
    for gf, gr in zip(grads_f, grads_r, strict=True):
        assert _rel_err(gf, gr) < 1e-11


@pytest.mark.parametrize("detach_every", [1, 2, 3])
@pytest.mark.parametrize("update", ["linear", "delta"])
def test_truncated_backprop_equals_reference(update, detach_every):
    q, k, v, state = _inputs(1, 4, 2, 5 * SEGMENT + 3, initial=True)
    out_f, fin_f, grads_f = _run(compressive_memory, q, k, v, state, update, detach_every)
    out_r, fin_r, grads_r = _run(compressive_memory_reference, q, k, v, state, update, detach_every)
    assert _rel_err(out_f, out_r) < 1e-12 and _rel_err(fin_f.M, fin_r.M) < 1e-12
    for gf, gr in zip(grads_f, grads_r, strict=True):
        assert (gf is None) == (gr is None)
        if gf is not None:
            assert _rel_err(gf, gr) < 1e-11


def test_detach_cuts_gradient_to_earlier_segments():
    q, k, v, _ = _inputs(1, 2, 2, 3 * SEGMENT, initial=False)
    k.requires_grad_()
    out, _ = compressive_memory(q, k, v, SEGMENT, detach_every=1)
    (grad,) = torch.autograd.grad(out[:, :, 2 * SEGMENT :].sum(), k)
    assert torch.count_nonzero(grad) == 0
    out, _ = compressive_memory(q, k, v, SEGMENT)
    (grad,) = torch.autograd.grad(out[:, :, 2 * SEGMENT :].sum(), k)
    assert grad[:, :, :SEGMENT].abs().sum() > 0


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("split", [SEGMENT, 2 * SEGMENT])
def test_state_carry_equals_one_call(update, split):
    T = 4 * SEGMENT + 3
    q, k, v, state = _inputs(2, 4, 2, T, initial=True)
    out, final = compressive_memory(q, k, v, SEGMENT, update=update, initial_state=state, output_final_state=True)
    out1, mid = compressive_memory(
        q[:, :, :split], k[:, :, :split], v[:, :, :split], SEGMENT,
        update=update, initial_state=state, output_final_state=True,
    )  # fmt: skip
    out2, end = compressive_memory(
        q[:, :, split:], k[:, :, split:], v[:, :, split:], SEGMENT,
        update=update, initial_state=mid, output_final_state=True,
    )  # fmt: skip
    assert _rel_err(torch.cat([out1, out2], dim=2), out) < 1e-12
    assert _rel_err(end.M, final.M) < 1e-12 and _rel_err(end.z, final.z) < 1e-12


@pytest.mark.parametrize("fn", [compressive_memory, compressive_memory_reference])
def test_empty_memory_reads_exactly_zero(fn):
    q, k, v, _ = _inputs(1, 2, 2, 2 * SEGMENT, initial=False)
    q.requires_grad_()
    out, _ = fn(q, k, v, SEGMENT)
    assert torch.equal(out[:, :, :SEGMENT], torch.zeros_like(out[:, :, :SEGMENT]))
    assert out[:, :, SEGMENT:].abs().min() > 0
    (grad,) = torch.autograd.grad(out.sum(), q)
    assert torch.isfinite(grad).all()


def test_linear_rule_is_the_plain_sum():
    # With the linear rule the memory after all segments is Σ σ(K)ᵀ V regardless of segmentation.
    q, k, v, _ = _inputs(1, 1, 1, 3 * SEGMENT, initial=False)
    _, final = compressive_memory(q, k, v, SEGMENT, update="linear", output_final_state=True)
    sk = torch.nn.functional.elu(k) + 1
    assert _rel_err(final.M, sk.transpose(-1, -2) @ v) < 1e-12
    assert _rel_err(final.z, sk.sum(dim=2)) < 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_state_stays_float32_for_low_precision_inputs(dtype):
    # 64 segments of large keys and values: a bf16 or fp16 running sum would overflow or stall.
    q, k, v, _ = _inputs(1, 2, 2, 64 * SEGMENT, initial=False, dtype=torch.float32)
    q, k, v = ((t * 4).to(dtype) for t in (q, k, v))
    for update in ("linear", "delta"):
        out, final = compressive_memory(q, k, v, SEGMENT, update=update, output_final_state=True)
        assert out.dtype == dtype and final.M.dtype == torch.float32 and final.z.dtype == torch.float32
        assert torch.isfinite(out).all() and torch.isfinite(final.M).all()
        ref, ref_final = compressive_memory_reference(
            q.double(), k.double(), v.double(), SEGMENT, update=update, output_final_state=True
        )
        assert _rel_err(final.M.double(), ref_final.M) < 1e-4


def test_bad_inputs_raise_clear_errors():
    q, k, v, _ = _inputs(1, 3, 2, SEGMENT, initial=False)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        compressive_memory(q, k, v, SEGMENT)
    q, k, v, _ = _inputs(1, 2, 2, SEGMENT, initial=False)
    with pytest.raises(ValueError, match="segment_len must be >= 1"):
        compressive_memory(q, k, v, 0)
    with pytest.raises(ValueError, match="update must be one of"):
        compressive_memory(q, k, v, SEGMENT, update="gated")
    with pytest.raises(ValueError, match="initial_state must have"):
        compressive_memory(q, k, v, SEGMENT, initial_state=MemoryState(torch.zeros(1, 2, D, D), torch.zeros(1, 2, D)))
    with pytest.raises(ValueError, match="disagree"):
        compressive_memory(q, k[:, :, :-1], v, SEGMENT)


CAUSAL = list(itertools.product(["linear", "delta"], [None, 2], [False, True]))


@pytest.mark.parametrize(
    "update,detach_every,initial",
    CAUSAL,
    ids=[f"{u}-bptt{d}-{'init' if i else 'empty'}" for u, d, i in CAUSAL],
)
def test_changing_token_t_leaves_every_earlier_output_bit_identical(update, detach_every, initial):
    # Exact in float32, not only to a tolerance: no sum over a segment's tokens may reach its earlier tokens.
    T = 5 * SEGMENT + 3  # several segments and a short last one
    q, k, v, state = _inputs(2, 4, 2, T, initial=initial, dtype=torch.float32)
    out, _ = compressive_memory(q, k, v, SEGMENT, update=update, initial_state=state, detach_every=detach_every)
    g = torch.Generator().manual_seed(7)
    for t in (SEGMENT + 2, 3 * SEGMENT + 5, T - 1):  # mid-segment, late in a segment, the last token
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, :, t:] = torch.randn(x[:, :, t:].shape, generator=g)
        out2, _ = compressive_memory(q2, k2, v2, SEGMENT, update=update, initial_state=state, detach_every=detach_every)
        assert torch.equal(out[:, :, :t], out2[:, :, :t])
        later_segment = (t // SEGMENT + 1) * SEGMENT
        if later_segment < T:  # the memory carries the change to the next segments
            assert not torch.equal(out[:, :, later_segment:], out2[:, :, later_segment:])


@pytest.mark.parametrize("fn", [compressive_memory, compressive_memory_reference], ids=["fast", "reference"])
def test_empty_sequence_reads_nothing_and_passes_the_state_on(fn):
    q, k, v, state = _inputs(2, 4, 2, 0, initial=True)
    out, final = fn(q, k, v, SEGMENT, update="delta", initial_state=state, output_final_state=True)
    assert out.shape == (2, 4, 0, DV)
    assert torch.equal(final.M, state.M) and torch.equal(final.z, state.z)


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_inputs_in_the_projections_layout_equal_reference(update):
    # The attention layer passes q, k, v as transposed views of (B, T, H, D) projections, not contiguous.
    B, T, Hq, Hkv = 2, 3 * SEGMENT + 5, 4, 2
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, T, Hq, D, generator=g, dtype=torch.float64).transpose(1, 2)
    k = torch.randn(B, T, Hkv, D, generator=g, dtype=torch.float64).transpose(1, 2)
    v = torch.randn(B, T, Hkv, DV, generator=g, dtype=torch.float64).transpose(1, 2)
    out_f, fin_f, grads_f = _run(compressive_memory, q, k, v, None, update)
    out_r, fin_r, grads_r = _run(compressive_memory_reference, q, k, v, None, update)
    assert _rel_err(out_f, out_r) < 1e-12 and _rel_err(fin_f.M, fin_r.M) < 1e-12
    for gf, gr in zip(grads_f, grads_r, strict=True):
        assert _rel_err(gf, gr) < 1e-11


def test_segment_loop_is_picked_for_large_cpu_inputs_only():
    large = torch.empty(2, 8, 4096, 64)  # the CPU benchmark's shape
    tiny = torch.empty(8, 4, 256, 16)  # the tiny study's: fits in cache, the batched op is faster
    assert prefers_segment_loop(large, 128)
    assert not prefers_segment_loop(tiny, 16)
    assert not prefers_segment_loop(large, 1)  # one-token segments: a loop of 4,096 steps
