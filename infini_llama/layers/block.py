"""The pre-norm LLaMA decoder layer around any attention block."""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from infini_llama.layers.mlp import SwiGLU
from infini_llama.layers.norm import RMSNorm


class DecoderLayer(GradientCheckpointingLayer):
    """x + attn(norm(x)), then + mlp(norm(x)). `self_attn` is a CausalSelfAttention, an InfiniAttention or a
    LocalAttention."""

    def __init__(self, self_attn: nn.Module, hidden_size: int, intermediate_size: int, rms_norm_eps: float):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = SwiGLU(hidden_size, intermediate_size)
        self.input_layernorm = RMSNorm(hidden_size, rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, rms_norm_eps)

    def forward(self, x: torch.Tensor, state=None, use_cache: bool = False):
        attn_out, state = self.self_attn(self.input_layernorm(x), state, use_cache)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, state
