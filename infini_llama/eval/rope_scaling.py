"""RoPE scaling at evaluation: the usual length-extension trick, applied to a trained full-attention model at no
training cost, so the compressive memory is compared with it as well as with plain RoPE.

Beyond its training length a full-attention model mostly measures whether RoPE extrapolates; dynamic NTK scaling
(transformers' "dynamic") or YaRN (its "yarn") are what one would use instead. The scaling is switched on for the
duration of an evaluation, like the memory-off ablation, and recorded in the run's settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from infini_llama.layers import CausalSelfAttention, InfiniAttention
from infini_llama.layers.rope import ROPE_SCALINGS, check_rope_scaling

ROPE_SCALING_NAMES = {"dynamic": "dynamic NTK", "yarn": "YaRN"}


def rope_scaling(rope_type: str, train_len: int, factor: float | str = 1.0, **options) -> dict:
    """The scaling `rope_type` ("dynamic" or "yarn") for a model trained at `train_len` tokens.

    Dynamic NTK with factor 1 scales the RoPE base so that its longest wavelength stretches exactly by the ratio of
    the current length to the training length (no scaling up to it); YaRN interpolates by `factor` whatever the
    length, or, with `factor="length"`, by that same ratio (the factor each prompt's length calls for)."""
    if rope_type not in ROPE_SCALINGS:
        raise ValueError(f"rope scaling must be one of {ROPE_SCALINGS}, got {rope_type!r}")
    if factor == "length":
        factor, options = 1.0, {**options, "per_length": True}
    scaling = {"rope_type": rope_type, "factor": float(factor), "original_max_position_embeddings": int(train_len)}
    return check_rope_scaling({**scaling, **options})


def rope_scaling_label(scaling: dict) -> str:
    """How reports name a scaled row: "RoPE dynamic NTK", "RoPE YaRN ×8", "RoPE YaRN ×length"."""
    name = ROPE_SCALING_NAMES[scaling["rope_type"]]
    if scaling.get("per_length"):
        return f"RoPE {name} ×length"
    factor = scaling.get("factor", 1.0)
    return f"RoPE {name}" + (f" ×{factor:g}" if factor != 1.0 else "")


@contextlib.contextmanager
def rope_scaled(model: nn.Module, scaling: dict) -> Iterator[nn.Module]:
    """Inside the block every full-attention layer of `model` applies the RoPE scaling `scaling`; restored on exit.

    Refuses an Infini-attention model: its local attention restarts positions in every segment, so it never sees
    a position beyond its segment and has nothing to extend."""
    scaling = check_rope_scaling(scaling)
    if any(isinstance(m, InfiniAttention) for m in model.modules()):
        raise ValueError(
            "RoPE scaling applies to full-attention models: Infini-attention restarts positions in every segment, "
            "so it never sees a position beyond its segment; evaluate the baseline with it"
        )
    layers = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    if not layers:
        raise ValueError("RoPE scaling needs an infini_llama full-attention model (attention='full'); none found")
    saved = [layer.rope_scaling for layer in layers]
    try:
        for layer in layers:
            layer.rope_scaling = scaling
        yield model
    finally:
        for layer, value in zip(layers, saved, strict=True):
            layer.rope_scaling = value
