"""Rotary position embedding in the "rotate half" layout used by HF Llama checkpoints.

The tables are always computed in float32 (positions times frequencies lose precision in bf16) and cast
to the activations' dtype only when applied.
"""

from __future__ import annotations

import torch


def rope_tables(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, head_dim) for integer `positions` (T,)."""
    with torch.autocast(device_type=positions.device.type, enabled=False):
        inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float() / head_dim)
        )
        freqs = positions.float()[:, None] * inv_freq[None, :]
        angles = torch.cat([freqs, freqs], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x: (B, H, T, D) by the tables cos, sin: (T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
