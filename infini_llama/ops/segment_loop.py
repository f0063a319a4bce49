"""The compressive memory on CPU for large inputs: one segment at a time, forward and backward by hand.

On a CPU the batched op in `memory.py` streams every token-sized tensor (σ(Q), σ(K), the reads, and in the
backward their gradients) through main memory several times, and the per-segment reference ends up about as
fast: its tensors of one segment stay in the core's cache. This path keeps that locality and removes the
reference's overheads:

- The state is augmented, M̃ = [M | z] (D × (Dv + 1)), so one matmul σ(X) M̃ gives a read's numerator and its
  denominator, for the queries and (delta rule) the keys of a segment stacked as X = [Q; K].
- The update is M̃ += σ(K)ᵀ W̃ with W̃ = [V − U | 1] (U = 0 for the linear rule): the ones column updates z.
- σ(x) = exp(min(x, 0)) + max(x, 0) equals ELU(x) + 1 without expm1 (several times slower than exp on CPU),
  and σ'(x) = min(σ(x), 1), so the backward needs σ only.
- The backward is the adjoint of the segment loop, run in reverse, from what the forward saved of each segment
  (σ(X), the memory before it, its reads and W̃): per segment a handful of matmuls on cache-sized tensors.

Same contract as `compressive_memory`; `compressive_memory` picks this path (see `prefers_segment_loop`).
"""

from __future__ import annotations

import torch

from infini_llama.ops.state import MemoryState

# Below these sizes the batched op wins: everything fits in cache and per-call overhead dominates.
_MIN_ELEMENTS = 1 << 20  # elements of q
_MIN_SEGMENT_ELEMENTS = 1 << 14  # elements of one segment of q (B · Hq · segment_len · D)


def prefers_segment_loop(q: torch.Tensor, segment_len: int) -> bool:
    """True where this path beats the batched op: large CPU inputs outside torch.compile (which fuses the
    batched op's element-wise passes itself)."""
    if q.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    B, Hq, T, D = q.shape
    return q.numel() >= _MIN_ELEMENTS and B * Hq * min(segment_len, T) * D >= _MIN_SEGMENT_ELEMENTS


def _sigma_into(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """out = σ(x) = exp(min(x, 0)) + max(x, 0), written into `out` (contiguous, x's shape)."""
    torch.clamp(x, max=0.0, out=out)
    out.exp_()
    return out.add_(x.clamp(min=0.0))


def _reciprocal(den: torch.Tensor) -> torch.Tensor:
    """1 / den, and 0 where den = 0 (an empty memory reads exactly 0, as `guarded_divide`); den >= 0 here
    (σ > 0, z >= 0), so only +inf needs clearing, and a NaN still propagates."""
    return torch.nan_to_num_(den.reciprocal(), nan=float("nan"), posinf=0.0, neginf=0.0)


class _Shapes:
    """Sizes and per-segment views shared by the forward and the backward loop."""

    def __init__(self, q, k, v, segment_len):
        self.B, self.Hq, self.T, self.D = q.shape
        self.Hkv, self.Dv = k.shape[1], v.shape[-1]
        self.groups = self.Hq // self.Hkv
        self.segment_len = segment_len

    def split_queries(self, x):  # (B, Hq, T, E) -> per segment (B, Hkv, groups, n, E)
        return x.view(self.B, self.Hkv, self.groups, self.T, x.shape[-1]).split(self.segment_len, dim=3)

    def split(self, x):  # (B, Hkv, T, E) -> per segment (B, Hkv, n, E)
        return x.split(self.segment_len, dim=2)

    def values_buffer(self, like, n=None):
        """W̃'s storage for one segment of n tokens (default: a full one): (B, Hkv, n, Dv + 1), ones column set."""
        w = like.new_empty(self.B, self.Hkv, n or min(self.segment_len, self.T), self.Dv + 1)
        w[..., self.Dv] = 1.0
        return w


class _SegmentLoop(torch.autograd.Function):
    """out, M, z = memory(q, k, v, M0, z0) with the adjoint loop as backward. Shapes as `segment_loop_memory`;
    q, k, v, M0, z0 all in the state dtype."""

    @staticmethod
    def forward(ctx, q, k, v, M0, z0, segment_len, delta, detach_every, save):
        sh = _Shapes(q, k, v, segment_len)
        B, Hkv, D, Dv, g = sh.B, sh.Hkv, sh.D, sh.Dv, sh.groups
        memory = torch.cat([M0, z0.unsqueeze(-1)], dim=-1)  # M̃ = [M | z]: (B, Hkv, D, Dv + 1)
        out = q.new_empty(B, sh.Hq, sh.T, Dv)
        w_buffer = sh.values_buffer(q)
        x_buffer = None if save else q.new_empty(B * Hkv * (g + 1) * min(segment_len, sh.T) * D)
        segments_saved = []
        segments = zip(sh.split_queries(q), sh.split(k), sh.split(v), sh.split_queries(out), strict=True)
        for qs, ks, vs, outs in segments:
            n = ks.shape[2]
            if save:  # σ(X) of every segment is kept for the backward
                x = q.new_empty(B, Hkv, (g + 1) * n, D)
            else:
                x = x_buffer[: B * Hkv * (g + 1) * n * D].view(B, Hkv, (g + 1) * n, D)
            read, r = _read(x, qs, ks, memory, delta)
            Lq = g * n
            torch.mul(read[:, :, :Lq, :Dv].view(B, Hkv, g, n, Dv), r[:, :, :Lq, None].view(B, Hkv, g, n, 1), out=outs)
            w = _update_values(sh.values_buffer(q, n) if save else w_buffer[:, :, :n], vs, read, r, Lq, delta)
            if save:  # what the backward of this segment reads (the memory before it, its reads and writes)
                segments_saved.append((x, memory.clone(), read, r, w))
            memory.view(B * Hkv, D, Dv + 1).baddbmm_(
                x[:, :, Lq:].reshape(B * Hkv, n, D).transpose(1, 2), w.reshape(B * Hkv, n, Dv + 1)
            )
        if save:
            ctx.save_for_backward(q, k, v)
            ctx.segments = segments_saved
            ctx.options = (segment_len, delta, detach_every)
        return out, memory[..., :Dv].contiguous(), memory[..., Dv].contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out, g_M, g_z):
        q, k, v = ctx.saved_tensors
        segment_len, delta, detach_every = ctx.options
        sh = _Shapes(q, k, v, segment_len)
        B, Hkv, D, Dv, g = sh.B, sh.Hkv, sh.D, sh.Dv, sh.groups
        g_memory = torch.cat([g_M, g_z.unsqueeze(-1)], dim=-1)  # adjoint of M̃ after the last segment
        g_q, g_k, g_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        segments = list(
            zip(
                sh.split(k), sh.split_queries(g_out), sh.split_queries(g_q), sh.split(g_k), sh.split(g_v),
                ctx.segments, strict=True,
            )
        )  # fmt: skip
        for s in reversed(range(len(segments))):
            ks, g_outs, g_qs, g_ks, g_vs, (x, memory, read, r, w) = segments[s]
            n = ks.shape[2]
            Lq = g * n
            rows = (g + 1) * n if delta else Lq
            keys3 = x[:, :, Lq:].reshape(B * Hkv, n, D)
            g_memory3 = g_memory.view(B * Hkv, D, Dv + 1)

            # The update M̃_s = M̃ + σ(K)ᵀ W̃: g_W̃ = σ(K) g_M̃ (its first Dv columns are V's gradient).
            g_w = keys3 @ g_memory3  # (B·Hkv, n, Dv + 1)
            g_vs.copy_(g_w.view(B, Hkv, n, Dv + 1)[..., :Dv])

            # The reads R = σ(Q) M̃ (out = R r) and, delta only, P = σ(K) M̃ (U = P r, W̃ = V − U): upstream
            # gradients of the numerators go in G[..., :Dv], first unscaled, to take the dot products for
            # the denominators (d r / d den = −r²), then scaled by r.
            G = read.new_empty(B, Hkv, rows, Dv + 1)
            G[:, :, :Lq, :Dv].view(B, Hkv, g, n, Dv).copy_(g_outs)
            if delta:
                torch.neg(g_w.view(B, Hkv, n, Dv + 1)[..., :Dv], out=G[:, :, Lq:, :Dv])
            dots = torch.linalg.vecdot(G[..., :Dv], read[..., :Dv])
            torch.mul(dots, r.square().neg_(), out=G[..., Dv])
            G[..., :Dv].mul_(r.unsqueeze(-1))

            # σ(X)'s gradient: the reads' share, G M̃ᵀ, plus the update's share for the keys, W̃ g_M̃ᵀ.
            g_x = G @ memory.transpose(-1, -2)  # (B, Hkv, rows, D)
            w3 = w.reshape(B * Hkv, n, Dv + 1)
            if delta:
                g_x[:, :, Lq:].reshape(B * Hkv, n, D).baddbmm_(w3, g_memory3.transpose(1, 2))
            else:
                g_x = torch.cat([g_x, (w3 @ g_memory3.transpose(1, 2)).view(B, Hkv, n, D)], dim=2)
            g_memory3.baddbmm_(x[:, :, :rows].reshape(B * Hkv, rows, D).transpose(1, 2), G.view(B * Hkv, rows, Dv + 1))
            if detach_every and s > 0 and s % detach_every == 0:
                g_memory.zero_()  # the reference detaches the memory entering segment s

            slope = x.clamp(max=1.0)  # σ'(x) = min(σ(x), 1)
            torch.mul(g_x[:, :, :Lq].view(B, Hkv, g, n, D), slope[:, :, :Lq].view(B, Hkv, g, n, D), out=g_qs)
            torch.mul(g_x[:, :, Lq:], slope[:, :, Lq:], out=g_ks)
        ctx.segments = None
        return g_q, g_k, g_v, g_memory[..., :Dv], g_memory[..., Dv], None, None, None, None


def _read(x, qs, ks, memory, delta):
    """Fill x (B, Hkv, (groups + 1)·n, D) with σ of the segment's queries and keys stacked as X = [Q; K], and
    return X M̃ (queries only for the linear rule) with the guarded reciprocal of its last column."""
    B, Hkv, g, n, D = qs.shape
    Lq = g * n
    _sigma_into(x[:, :, :Lq].view(B, Hkv, g, n, D), qs)
    _sigma_into(x[:, :, Lq:], ks)
    read = (x if delta else x[:, :, :Lq]) @ memory
    return read, _reciprocal(read[..., -1])


def _update_values(w, vs, read, r, Lq, delta):
    """Fill w (B, Hkv, n, Dv + 1; ones column set) with W̃ = [V − σ(K) M / (σ(K) z) | 1] (delta) or [V | 1]
    (linear): what the segment writes, with the ones column that adds Σ σ(K) to z."""
    Dv = vs.shape[-1]
    if delta:
        torch.addcmul(vs, read[:, :, Lq:, :Dv], r[:, :, Lq:, None], value=-1.0, out=w[..., :Dv])
    else:
        w[..., :Dv] = vs
    return w


def segment_loop_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_len: int,
    *,
    update: str,
    initial_state: MemoryState | None,
    detach_every: int | None,
    state_dtype: torch.dtype,
) -> tuple[torch.Tensor, MemoryState]:
    """q: (B, Hq, T, D), k: (B, Hkv, T, D), v: (B, Hkv, T, Dv) -> out (B, Hq, T, Dv) in the state dtype and the
    MemoryState after the last segment. Inputs are checked by the caller (`compressive_memory`)."""
    B, Hkv, _, D = k.shape
    Dv = v.shape[-1]
    q, k, v = q.to(state_dtype), k.to(state_dtype), v.to(state_dtype)
    if initial_state is None:
        M0 = q.new_zeros(B, Hkv, D, Dv, dtype=state_dtype)
        z0 = q.new_zeros(B, Hkv, D, dtype=state_dtype)
    else:
        M0, z0 = initial_state.M.to(state_dtype), initial_state.z.to(state_dtype)
    tensors = (q, k, v, M0, z0)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    with torch.autocast(device_type=q.device.type, enabled=False):
        out, M, z = _SegmentLoop.apply(q, k, v, M0, z0, segment_len, update == "delta", detach_every or 0, save)
    return out, MemoryState(M, z)
