"""The compressive memory's state and the input checks shared by the reference and the fast op."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

MEMORY_UPDATES = ("linear", "delta")


class MemoryState(NamedTuple):
    """Memory of one layer after some segments: M (B, Hkv, D, Dv) and normaliser z (B, Hkv, D).

    Kept in float32 for float32/bf16/fp16 inputs (float64 for float64): summing σ(K)ᵀV over many
    segments overflows or loses all precision in bf16.
    """

    M: torch.Tensor
    z: torch.Tensor

    def detach(self) -> MemoryState:
        return MemoryState(self.M.detach(), self.z.detach())


def state_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """Precision of the memory for inputs of `dtype`: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_memory_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_len: int,
    update: str,
    initial_state: MemoryState | None,
    detach_every: int | None,
) -> tuple[int, int, int, int, int, int]:
    """Validate shapes and options; return (B, Hq, T, D, Dv, groups) with groups = Hq // Hkv."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (B, H, T, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, Hq, T, D = q.shape
    Bk, Hkv, Tk, Dk = k.shape
    if (Bk, Tk, Dk) != (B, T, D) or v.shape[:3] != (B, Hkv, T):
        raise ValueError(
            f"q (B, Hq, T, D), k (B, Hkv, T, D), v (B, Hkv, T, Dv) disagree: "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if segment_len < 1:
        raise ValueError(f"segment_len must be >= 1, got {segment_len}")
    if update not in MEMORY_UPDATES:
        raise ValueError(f"update must be one of {MEMORY_UPDATES}, got {update!r}")
    if detach_every is not None and detach_every < 1:
        raise ValueError(f"detach_every must be None or >= 1, got {detach_every}")
    Dv = v.shape[-1]
    if initial_state is not None:
        M, z = initial_state
        if tuple(M.shape) != (B, Hkv, D, Dv) or tuple(z.shape) != (B, Hkv, D):
            raise ValueError(
                f"initial_state must have M {(B, Hkv, D, Dv)} and z {(B, Hkv, D)}; "
                f"got {tuple(M.shape)} and {tuple(z.shape)}"
            )
    return B, Hq, T, D, Dv, Hq // Hkv


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """σ(x) = ELU(x) + 1: the positive feature map of the memory (IA eq. 3)."""
    return F.elu(x) + 1.0


def guarded_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, and exactly 0 where the denominator is 0.

    An empty memory reads 0 / 0; σ > 0, so the denominator is 0 only then. The guard works on the
    denominator alone (one value per token, broadcast over the feature dimension), so it costs one small
    pass, and the `where` keeps the gradient finite too.
    """
    positive = denominator > 0
    reciprocal = torch.where(positive, 1.0 / torch.where(positive, denominator, 1.0), 0.0)
    return numerator * reciprocal
