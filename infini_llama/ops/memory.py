"""The compressive memory, parallel across segments.

Same definition as `compressive_memory_reference` (a loop over segments), computed without a Python loop
over anything token-sized:

- z before segment s is an exclusive prefix sum over segments of Σ_t σ(K_t) (a shifted cumulative sum, so
  a segment's own tokens never reach its reads, not even through rounding).
- Linear rule: M before segment s is an exclusive prefix sum of σ(K_j)ᵀ V_j, so the retrieval of every
  segment is one batched matmul against the stack of "memory before s".
- Delta rule: σ(K_s)ᵀ σ(K_s) M_{s-1} / (σ(K_s) z_{s-1}) = A_s M_{s-1} with the D×D matrix
  A_s = Σ_t σ(k_t) σ(k_t)ᵀ / (σ(k_t)·z_{s-1}); z does not depend on M, so every A_s and every
  B_s = σ(K_s)ᵀ V_s is computed batched, and only the small recurrence M_s = M_{s-1} + B_s − A_s M_{s-1}
  (D×D times D×Dv per segment) loops over segments, inside one operator (`recurrence.py`).

On CPU, for inputs larger than the cache, the segment loop of `segment_loop.py` (same contract, backward by
hand) is faster than these whole-sequence passes; `compressive_memory` picks it there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from infini_llama.ops.recurrence import delta_recurrence
from infini_llama.ops.segment_loop import prefers_segment_loop, segment_loop_memory
from infini_llama.ops.state import (
    MemoryState,
    check_memory_inputs,
    elu_plus_one,
    guarded_divide,
    state_dtype_for,
)


def compressive_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_len: int,
    *,
    update: str = "delta",
    initial_state: MemoryState | None = None,
    output_final_state: bool = False,
    detach_every: int | None = None,
) -> tuple[torch.Tensor, MemoryState | None]:
    """Retrieve from and update the compressive memory for a whole sequence at once.

    q: (B, Hq, T, D), k: (B, Hkv, T, D), v: (B, Hkv, T, Dv); Hq a multiple of Hkv (query head h reads
    KV head h // (Hq / Hkv)). σ = ELU + 1 is applied to q and k here. Token t of segment s gets
    σ(q_t) M / (σ(q_t) z) from the memory of segments < s plus `initial_state` (exactly 0 while empty).
    `update` is "linear" (M += σ(K)ᵀV) or "delta" (M += σ(K)ᵀ(V − σ(K)M / σ(K)z)). T need not be a
    multiple of `segment_len`: the last segment is shorter. `detach_every=k` cuts the memory's graph at
    every k-th segment boundary (truncated backprop through time; None keeps the full graph).

    Returns out (B, Hq, T, Dv) in q's dtype and, if `output_final_state`, the MemoryState after the last
    segment (float32, or float64 for float64 inputs). Autocast is disabled inside: the memory math runs
    in the state dtype.
    """
    T = check_memory_inputs(q, k, v, segment_len, update, initial_state, detach_every)[2]
    if T > 0 and prefers_segment_loop(q, segment_len):
        out, state = segment_loop_memory(
            q, k, v, segment_len, update=update, initial_state=initial_state, detach_every=detach_every,
            state_dtype=state_dtype_for(q.dtype),
        )  # fmt: skip
        return out.to(q.dtype), (state if output_final_state else None)
    return _batched(q, k, v, segment_len, update, initial_state, output_final_state, detach_every)


def _batched(q, k, v, segment_len, update, initial_state, output_final_state, detach_every):
    """Every segment at once (see the module docstring); inputs already checked."""
    B, Hq, T, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[-1]
    groups = Hq // Hkv
    dtype = state_dtype_for(q.dtype)
    L = segment_len
    S = max(1, math.ceil(T / L))
    pad = S * L - T

    with torch.autocast(device_type=q.device.type, enabled=False):
        # Padding goes in after σ, so padded keys are exactly 0 and write nothing to the memory.
        sq = _pad_time(elu_plus_one(q.to(dtype)), pad).view(B, Hkv, groups, S, L, D)
        sk = _pad_time(elu_plus_one(k.to(dtype)), pad).view(B, Hkv, S, L, D)
        vv = _pad_time(v.to(dtype), pad).view(B, Hkv, S, L, Dv)

        if initial_state is None:
            M0 = sq.new_zeros(B, Hkv, D, Dv)
            z0 = sq.new_zeros(B, Hkv, D)
        else:
            M0, z0 = initial_state.M.to(dtype), initial_state.z.to(dtype)

        z_before, z_final = _exclusive_prefix_sum(sk.sum(dim=3), z0, detach_every)  # (B, Hkv, S, D)
        kv = sk.transpose(-1, -2) @ vv  # σ(K_s)ᵀ V_s: (B, Hkv, S, D, Dv)
        if update == "linear":
            M_before, M_final = _exclusive_prefix_sum(kv, M0, detach_every)
        else:
            key_norm = sk @ z_before.unsqueeze(-1)  # σ(k_t)·z_{s-1}: (B, Hkv, S, L, 1)
            A = sk.transpose(-1, -2) @ guarded_divide(sk, key_norm)  # (B, Hkv, S, D, D)
            M_before, M_final = delta_recurrence(A, kv, M0, detach_every)

        # Numerator and denominator of the retrieval in one matmul: z rides along as an extra value column.
        memory = torch.cat([M_before, z_before.unsqueeze(-1)], dim=-1)  # (B, Hkv, S, D, Dv + 1)
        read = torch.einsum("bhgsld,bhsde->bhgsle", sq, memory)
        out = guarded_divide(read[..., :Dv], read[..., Dv:])
        out = out.reshape(B, Hq, S * L, Dv)[:, :, :T]

    state = MemoryState(M_final, z_final) if output_final_state else None
    return out.to(q.dtype), state


def _pad_time(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Append `pad` zero tokens to x: (B, H, T, E); no copy when there is nothing to pad."""
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def _exclusive_prefix_sum(
    delta: torch.Tensor, initial: torch.Tensor, detach_every: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of `initial` and delta[:, :, :s] for every s (dim 2 = segments), and the total.

    Exclusive sums are inclusive ones shifted by one segment, never "inclusive minus own term": the subtraction
    rounds differently for every value of the segment's own delta, so a later token of a segment would move the
    earlier tokens' reads by an ulp, and causality would hold only approximately.

    With `detach_every=k`, the running sum is cut from the graph at every k-th segment: segments in a window
    of k see a detached copy of the sum at the window's start plus their own window's earlier deltas.
    """
    B, H, S = delta.shape[:3]
    if detach_every is None or detach_every >= S:
        inclusive = delta.cumsum(dim=2)
        return initial.unsqueeze(2) + _shift_one(inclusive, dim=2), initial + inclusive[:, :, -1]
    rest = delta.shape[3:]
    k = detach_every
    windows = math.ceil(S / k)
    padded = F.pad(delta, (0, 0) * len(rest) + (0, windows * k - S)).view(B, H, windows, k, *rest)
    inclusive = padded.cumsum(dim=3)
    within = _shift_one(inclusive, dim=3)  # exclusive sum inside each window
    totals = inclusive[:, :, :, -1]  # (B, H, windows, ...)
    starts = initial.unsqueeze(2) + _shift_one(totals.cumsum(dim=2), dim=2)  # sum before each window
    if windows > 1:
        starts = torch.cat([starts[:, :, :1], starts[:, :, 1:].detach()], dim=2)
    final = starts[:, :, -1] + totals[:, :, -1]
    before = (starts.unsqueeze(3) + within).reshape(B, H, windows * k, *rest)[:, :, :S]
    return before, final


def _shift_one(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x moved one step along `dim`: a zero slice enters first and the last slice drops out."""
    first = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([first, x.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)
