"""Rotary position embedding in the "rotate half" layout used by HF Llama checkpoints.

The tables are always computed in float32 (positions times frequencies lose precision in bf16) and cast
to the activations' dtype only when applied.

RoPE scaling (a length-extension trick applied at evaluation, without training) follows `transformers`' own
definitions: the inverse frequencies and the cos/sin factor come from `transformers.modeling_rope_utils`, so a
scaled model computes what `LlamaForCausalLM` with the same `rope_parameters` computes.
"""

from __future__ import annotations

import functools

import torch

# The scalings supported: dynamic NTK (the base grows with the sequence once it passes the original length) and
# YaRN (interpolates the low frequencies by `factor` and scales the attention logits; static, or with `per_length`
# its factor follows the sequence as dynamic NTK's base does: the longest position of a call / the original length).
ROPE_SCALINGS = ("dynamic", "yarn")


def check_rope_scaling(scaling: dict | None) -> dict | None:
    """`scaling` validated: None, or {"rope_type": "dynamic" | "yarn", "factor": > 0, "per_length": (yarn only),
    "original_max_position_embeddings": the training length, ...} (further keys as transformers defines them,
    e.g. YaRN's beta_fast)."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict) or scaling.get("rope_type") not in ROPE_SCALINGS:
        raise ValueError(f"rope_scaling must be None or a dict with rope_type in {ROPE_SCALINGS}, got {scaling!r}")
    factor = scaling.get("factor")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor > 0:
        raise ValueError(f"rope_scaling factor must be a number > 0, got {factor!r}")
    original = scaling.get("original_max_position_embeddings")
    if not isinstance(original, int) or isinstance(original, bool) or original < 1:
        raise ValueError(
            "rope_scaling needs original_max_position_embeddings, the length the model was trained at (an integer "
            f">= 1), got {original!r}"
        )
    per_length = scaling.get("per_length", False)
    if not isinstance(per_length, bool) or (per_length and scaling["rope_type"] != "yarn"):
        raise ValueError(f"rope_scaling per_length is true or false, and only for yarn, got {scaling!r}")
    return dict(scaling)


def follows_length(scaling: dict) -> bool:
    """Whether `scaling` follows the length of each call (dynamic NTK, YaRN with `per_length`)."""
    return scaling["rope_type"] == "dynamic" or bool(scaling.get("per_length"))


def rope_tables(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype, scaling: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, head_dim) for integer `positions` (T,), scaled by `scaling` (see
    `check_rope_scaling`; None: plain RoPE). Dynamic scaling is a function of the longest position in the call,
    max(positions) + 1, as in transformers' forward."""
    with torch.autocast(device_type=positions.device.type, enabled=False):
        attention_scaling = 1.0
        seq_len = int(positions.max()) + 1 if scaling is not None and follows_length(scaling) else 0
        if scaling is None or seq_len and seq_len <= scaling["original_max_position_embeddings"]:
            # Plain RoPE; scaling that follows the length is plain RoPE up to the original length (transformers
            # keeps its original frequencies there).
            inv_freq = 1.0 / (
                theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float() / head_dim)
            )
        else:
            params = dict(scaling)
            if params.pop("per_length", False):  # YaRN stretched by this call's length over the original one
                params["factor"] = seq_len / params["original_max_position_embeddings"]
            dynamic_len = seq_len if params["rope_type"] == "dynamic" else 0
            inv_freq, attention_scaling = _scaled_frequencies(
                head_dim, theta, tuple(sorted(params.items())), dynamic_len, str(positions.device)
            )
        table = _cos_sin if positions.device.type == "cpu" else _cos_sin_inline
        cos, sin = table(positions, inv_freq.float())
        if attention_scaling != 1.0:  # YaRN's factor on the attention logits, applied to q and k through cos/sin
            cos, sin = cos * attention_scaling, sin * attention_scaling
        return cos.to(dtype), sin.to(dtype)


def _cos_sin_inline(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, 2 · F) of the angles positions (T,) × inv_freq (F,), each half repeated, in float32."""
    freqs = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos(), angles.sin()


@torch.library.custom_op("infini_llama::rope_cos_sin", mutates_args=())
def _cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`_cos_sin_inline` as one opaque operator, for CPUs: there a compiled layer then computes the table once.
    Written inline, the compiler fused the cos and sin into the kernels that apply them and evaluated them once per
    element of q and k (batch × heads times over), a fifth of a `tiny` fine-tuning step on a CPU. Not on CUDA,
    where recomputing them costs little and where, under bf16 autocast, compiled layers with this operator had
    gradients 23-32% off the eager layers' (torch 2.11, tests/train/test_gpu_compile.py; 3% with the tables
    inline; in float32 both agree), for a reason not found."""
    return _cos_sin_inline(positions, inv_freq)


@_cos_sin.register_fake
def _(positions, inv_freq):
    shape = (positions.shape[0], 2 * inv_freq.shape[0])
    return inv_freq.new_empty(shape, dtype=torch.float32), inv_freq.new_empty(shape, dtype=torch.float32)


@functools.lru_cache(maxsize=256)
def _scaled_frequencies(
    head_dim: int, theta: float, scaling: tuple, seq_len: int, device: str
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (head_dim / 2,) and cos/sin factor of a scaled RoPE, from transformers' definition.

    A LlamaConfig carries the values its functions read; dynamic scaling's original length is that config's
    `max_position_embeddings`. The sequence length is passed as a tensor, as transformers' forward passes it, so
    the arithmetic (and its float32 rounding) is the same. Cached: every layer and every call of one length asks
    for the same table."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = dict(scaling)
    original = params["original_max_position_embeddings"]
    if params["rope_type"] == "dynamic":  # transformers reads its original length from max_position_embeddings
        max_positions = params.pop("original_max_position_embeddings")
    else:
        max_positions = round(original * params["factor"])
    config = LlamaConfig(
        hidden_size=head_dim,
        num_attention_heads=1,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        rope_parameters={**params, "rope_theta": theta},
    )
    length = torch.tensor(seq_len, device=device) if seq_len else None
    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, torch.device(device), seq_len=length)
    return inv_freq.float(), float(attention_scaling)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x: (B, H, T, D) by the tables cos, sin: (T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
