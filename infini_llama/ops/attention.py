"""Causal softmax attention: over the whole sequence, or restricted to each segment."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, T, D) -> (B, Hkv * groups, T, D): query head h uses KV head h // groups (as HF's repeat_kv)."""
    if groups == 1:
        return x
    B, H, T, D = x.shape
    return x[:, :, None].expand(B, H, groups, T, D).reshape(B, H * groups, T, D)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """softmax(QKᵀ·scale + causal mask) V with q: (B, Hq, T, D), k/v: (B, Hkv, T, D|Dv) -> (B, Hq, T, Dv).

    Queries are aligned with the last T keys when k is longer than q (a KV cache), so a query still sees
    every key up to its own position.
    """
    groups = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    Tq, Tk = q.shape[2], k.shape[2]
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if Tq == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def segment_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_len: int, *, scale: float | None = None
) -> torch.Tensor:
    """Causal softmax attention inside each segment of `segment_len` tokens (no token sees another segment).

    q: (B, Hq, T, D), k: (B, Hkv, T, D), v: (B, Hkv, T, Dv) -> (B, Hq, T, Dv). All full segments go through
    one attention call with the segments folded into the batch; a shorter last segment takes a second call.
    """
    if segment_len < 1:
        raise ValueError(f"segment_len must be >= 1, got {segment_len}")
    B, Hq, T, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[-1]
    groups = Hq // Hkv
    S, rest = divmod(T, segment_len)
    if S <= 1 and rest == 0 or S == 0:
        return causal_attention(q, k, v, scale=scale)
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    full = S * segment_len

    def fold(x: torch.Tensor) -> torch.Tensor:  # (B, H, S*L, E) -> (B*S, H, L, E)
        E = x.shape[-1]
        return x[:, :, :full].reshape(B, Hq, S, segment_len, E).transpose(1, 2).reshape(B * S, Hq, segment_len, E)

    out = F.scaled_dot_product_attention(fold(q), fold(k), fold(v), is_causal=True, scale=scale)
    out = out.reshape(B, S, Hq, segment_len, Dv).transpose(1, 2).reshape(B, Hq, full, Dv)
    if rest:
        tail = F.scaled_dot_product_attention(
            q[:, :, full:], k[:, :, full:], v[:, :, full:], is_causal=True, scale=scale
        )
        out = torch.cat([out, tail], dim=2)
    return out
