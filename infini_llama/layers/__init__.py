"""Modules that own parameters: LLaMA blocks, full attention, Infini-attention and segment-local attention."""

from infini_llama.layers.attention import (
    GATE_ACTIVATIONS,
    CausalSelfAttention,
    InfiniAttention,
    InfiniState,
    KVState,
    LocalAttention,
    LocalState,
    gate_value,
)
from infini_llama.layers.block import DecoderLayer
from infini_llama.layers.mlp import SwiGLU
from infini_llama.layers.norm import RMSNorm
from infini_llama.layers.rope import apply_rope, rope_tables

__all__ = [
    "GATE_ACTIVATIONS",
    "CausalSelfAttention",
    "DecoderLayer",
    "InfiniAttention",
    "InfiniState",
    "KVState",
    "LocalAttention",
    "LocalState",
    "RMSNorm",
    "SwiGLU",
    "apply_rope",
    "gate_value",
    "rope_tables",
]
