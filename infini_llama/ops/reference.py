"""The compressive memory written straight from the equations: the readable definition.

A plain loop over segments, one retrieval and one update per segment, exactly as Infini-attention
(Munkhdalai et al., arXiv 2404.07143, section 2.1.2) states them. The fast op in `memory.py` must agree
with this loop (values and gradients) on every input; the tests run both in float64.
"""

from __future__ import annotations

import torch

from infini_llama.ops.state import (
    MemoryState,
    check_memory_inputs,
    elu_plus_one,
    guarded_divide,
    state_dtype_for,
)


def compressive_memory_reference(
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
    """Memory retrieval for every token and the memory after the last segment, one segment at a time.

    q: (B, Hq, T, D), k: (B, Hkv, T, D), v: (B, Hkv, T, Dv). Query head h reads KV head h // (Hq / Hkv).
    Returns out: (B, Hq, T, Dv) in q's dtype and, if asked, MemoryState(M: (B, Hkv, D, Dv), z: (B, Hkv, D)).
    `detach_every=k` cuts the graph of the memory at every k-th segment boundary (None: never).
    """
    B, Hq, T, D, Dv, groups = check_memory_inputs(q, k, v, segment_len, update, initial_state, detach_every)
    Hkv = Hq // groups
    dtype = state_dtype_for(q.dtype)
    if initial_state is None:
        M = q.new_zeros(B, Hkv, D, Dv, dtype=dtype)
        z = q.new_zeros(B, Hkv, D, dtype=dtype)
    else:
        M, z = initial_state.M.to(dtype), initial_state.z.to(dtype)

    state = MemoryState(M, z)
    outs = []
    for s, begin in enumerate(range(0, T, segment_len)):
        if detach_every is not None and s > 0 and s % detach_every == 0:
            state = state.detach()
        end = min(begin + segment_len, T)
        outs.append(memory_retrieve(q[:, :, begin:end], state))
        state = memory_update(k[:, :, begin:end], v[:, :, begin:end], state, update)

    out = torch.cat(outs, dim=2).to(q.dtype) if outs else q.new_zeros(B, Hq, 0, Dv)  # T = 0: no segment
    return out, (state if output_final_state else None)


def memory_retrieve(q: torch.Tensor, state: MemoryState) -> torch.Tensor:
    """A_mem = σ(Q) M / (σ(Q) z) (IA eq. 3) for q: (B, Hq, L, D) from M: (B, Hkv, D, Dv), z: (B, Hkv, D).

    Query head h reads KV head h // (Hq / Hkv). Returns (B, Hq, L, Dv) in q's dtype; exactly 0 while empty.
    """
    M, z = state
    groups = q.shape[1] // M.shape[1]
    with torch.autocast(device_type=q.device.type, enabled=False):
        sq = elu_plus_one(q.to(M.dtype))
        M_q = M.repeat_interleave(groups, dim=1)  # (B, Hq, D, Dv)
        z_q = z.repeat_interleave(groups, dim=1)  # (B, Hq, D)
        return guarded_divide(sq @ M_q, sq @ z_q.unsqueeze(-1)).to(q.dtype)


def memory_update(k: torch.Tensor, v: torch.Tensor, state: MemoryState, update: str) -> MemoryState:
    """The memory after writing one segment, k: (B, Hkv, L, D), v: (B, Hkv, L, Dv).

    linear (IA eq. 4): M + σ(K)ᵀ V; delta (IA eq. 5): M + σ(K)ᵀ (V − σ(K) M / (σ(K) z)); both: z + Σ_t σ(K_t).
    """
    M, z = state
    with torch.autocast(device_type=k.device.type, enabled=False):
        sk = elu_plus_one(k.to(M.dtype))
        vs = v.to(M.dtype)
        if update == "delta":
            vs = vs - guarded_divide(sk @ M, sk @ z.unsqueeze(-1))
        return MemoryState(M + sk.transpose(-1, -2) @ vs, z + sk.sum(dim=-2))
