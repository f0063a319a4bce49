"""Attention blocks: full causal attention (the baseline), Infini-attention and segment-local attention (the
memory-free control: Infini-attention with neither memory nor gate).

All take hidden states (B, T, C) and an optional per-layer streaming state, and return the block's output
and the state after these tokens (None when no state was asked for). None keeps hidden state on the module:
streaming state is data passed in and returned.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from infini_llama.layers.rope import apply_rope, check_rope_scaling, rope_tables
from infini_llama.ops import (
    MEMORY_UPDATES,
    MemoryState,
    causal_attention,
    compressive_memory,
    memory_retrieve,
    memory_update,
    segment_attention,
    state_dtype_for,
)

GATE_ACTIVATIONS = ("hard_sigmoid", "sigmoid")


class KVState(NamedTuple):
    """Streaming state of full attention: RoPE'd keys (B, Hkv, t, D) and values (B, Hkv, t, D) of all past tokens."""

    keys: torch.Tensor
    values: torch.Tensor


class InfiniState(NamedTuple):
    """Streaming state of Infini-attention: the memory of all finished segments, plus the un-rotated keys
    (B, Hkv, p, D) and values (B, Hkv, p, D) of the p < segment_len tokens of the current, unfinished segment."""

    memory: MemoryState
    keys: torch.Tensor
    values: torch.Tensor


class LocalState(NamedTuple):
    """Streaming state of segment-local attention: the un-rotated keys (B, Hkv, p, D) and values (B, Hkv, p, D) of
    the p < segment_len tokens of the current, unfinished segment (nothing of earlier segments is ever read)."""

    keys: torch.Tensor
    values: torch.Tensor


def gate_value(beta: torch.Tensor, activation: str) -> torch.Tensor:
    """g = act(β): the share of the memory in each head's output (the "balance factor")."""
    if activation == "hard_sigmoid":
        return torch.clamp(0.2 * beta + 0.5, 0.0, 1.0)
    if activation == "sigmoid":
        return torch.sigmoid(beta)
    raise ValueError(f"gate_activation must be one of {GATE_ACTIVATIONS}, got {activation!r}")


class _Projections(nn.Module):
    """q/k/v/o projections without biases, with GQA head bookkeeping. `rope_scaling` (None: plain RoPE) is a
    length-extension setting of `rope_tables`; evaluation switches it on for the full-attention baseline."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        rope_theta: float,
        rope_scaling: dict | None = None,
    ):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope_theta = rope_theta
        self.rope_scaling = check_rope_scaling(rope_scaling)
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        self.o_proj.writes_residual = True  # initialised with a depth-scaled std

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, C) -> q (B, H, T, D), k and v (B, Hkv, T, D)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def output(self, heads: torch.Tensor) -> torch.Tensor:
        """heads: (B, H, T, D) -> (B, T, C)."""
        B, H, T, D = heads.shape
        return self.o_proj(heads.transpose(1, 2).reshape(B, T, H * D))

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = rope_tables(positions, self.head_dim, self.rope_theta, x.dtype, self.rope_scaling)
        return apply_rope(x, cos, sin)


class CausalSelfAttention(_Projections):
    """Plain causal softmax attention over the whole sequence, RoPE at absolute positions: the baseline."""

    def forward(
        self, x: torch.Tensor, state: KVState | None = None, use_cache: bool = False
    ) -> tuple[torch.Tensor, KVState | None]:
        q, k, v = self.project(x)
        past = 0 if state is None else state.keys.shape[2]
        positions = torch.arange(past, past + x.shape[1], device=x.device)
        q, k = self.rotate(q, positions), self.rotate(k, positions)
        if state is not None:
            k = torch.cat([state.keys, k], dim=2)
            v = torch.cat([state.values, v], dim=2)
        out = causal_attention(q, k, v)
        return self.output(out), (KVState(k, v) if use_cache or state is not None else None)


class InfiniAttention(_Projections):
    """Infini-attention (arXiv 2404.07143): segment-local softmax attention mixed per head with a read from a
    compressive memory of all earlier segments, A = g · A_mem + (1 − g) · A_local with g = act(β).

    Local attention uses RoPE with positions restarting at 0 in every segment, so no position ≥ segment_len is
    ever seen. The memory reads and writes q/k without RoPE unless `memory_rope`. `bptt` is "full" (gradients
    flow through the memory across all segments), "none" (memory detached at every segment boundary) or an
    int k (detached every k segments). `gate_trainable=False` freezes β (requires_grad False).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        rope_theta: float,
        *,
        segment_len: int,
        memory_update: str = "delta",
        gate_activation: str = "hard_sigmoid",
        gate_init: float = 0.0,
        gate_trainable: bool = True,
        memory_rope: bool = False,
        bptt: str | int = "full",
    ):
        super().__init__(hidden_size, num_heads, num_kv_heads, head_dim, rope_theta)
        if memory_update not in MEMORY_UPDATES:
            raise ValueError(f"memory_update must be one of {MEMORY_UPDATES}, got {memory_update!r}")
        if gate_activation not in GATE_ACTIVATIONS:
            raise ValueError(f"gate_activation must be one of {GATE_ACTIVATIONS}, got {gate_activation!r}")
        self.segment_len = segment_len
        self.memory_update = memory_update
        self.gate_activation = gate_activation
        self.memory_rope = memory_rope
        self.gate_trainable = gate_trainable
        self.detach_every = {"full": None, "none": 1}[bptt] if isinstance(bptt, str) else int(bptt)
        # β, one per query head: the learned balance between memory and local attention; a frozen gate
        # (`gate_trainable=False`, an ablation) keeps g = act(gate_init) and is left out of the optimizer.
        self.memory_gate = nn.Parameter(torch.full((num_heads,), float(gate_init)), requires_grad=gate_trainable)

    def gate(self) -> torch.Tensor:
        """g = act(β) per head, shape (H,). A frozen β is detached here, so no gradient reaches it even when a
        loader (transformers' `from_pretrained`) hands back a parameter that requires one."""
        beta = self.memory_gate if self.gate_trainable else self.memory_gate.detach()
        return gate_value(beta, self.gate_activation)

    def forward(
        self, x: torch.Tensor, state: InfiniState | None = None, use_cache: bool = False
    ) -> tuple[torch.Tensor, InfiniState | None]:
        q, k, v = self.project(x)
        if state is None and not use_cache:
            local, memory = self._parallel(q, k, v)
            new_state = None
        else:
            if state is None:
                state = self.empty_state(x)
            local, memory, new_state = self._streaming(q, k, v, state)
        g = self.gate().to(local.dtype)[None, :, None, None]
        return self.output(g * memory.to(local.dtype) + (1.0 - g) * local), new_state

    def empty_state(self, x: torch.Tensor) -> InfiniState:
        B, D = x.shape[0], self.head_dim
        dtype = state_dtype_for(x.dtype)
        memory = MemoryState(
            x.new_zeros(B, self.num_kv_heads, D, D, dtype=dtype),
            x.new_zeros(B, self.num_kv_heads, D, dtype=dtype),
        )
        empty = x.new_zeros(B, self.num_kv_heads, 0, D)
        return InfiniState(memory, empty, empty)

    def _segment_positions(self, T: int, device: torch.device, start: int = 0) -> torch.Tensor:
        return (torch.arange(start, start + T, device=device)) % self.segment_len

    def _parallel(self, q, k, v):
        """The training path: every segment at once."""
        positions = self._segment_positions(q.shape[2], q.device)
        q_rot, k_rot = self.rotate(q, positions), self.rotate(k, positions)
        local = segment_attention(q_rot, k_rot, v, self.segment_len)
        mq, mk = (q_rot, k_rot) if self.memory_rope else (q, k)
        memory, _ = compressive_memory(
            mq, mk, v, self.segment_len, update=self.memory_update, detach_every=self.detach_every
        )
        return local, memory

    def _streaming(self, q, k, v, state: InfiniState):
        """Tokens that continue a stream: the first ones may finish the current segment, the rest start new
        segments. Gives the same outputs as the parallel path over the whole stream."""
        L, n = self.segment_len, q.shape[2]
        past = state.keys.shape[2]
        head = min(n, L - past) if past > 0 else 0
        local_parts, memory_parts = [], []
        memory = state.memory
        keys, values = state.keys, state.values
        if head > 0:
            # Finish the current segment: its queries see the segment's earlier keys and read the old memory.
            keys = torch.cat([keys, k[:, :, :head]], dim=2)
            values = torch.cat([values, v[:, :, :head]], dim=2)
            seg_positions = self._segment_positions(past + head, q.device)
            q_head = q[:, :, :head]
            local_parts.append(
                causal_attention(self.rotate(q_head, seg_positions[past:]), self.rotate(keys, seg_positions), values)
            )
            mq = self.rotate(q_head, seg_positions[past:]) if self.memory_rope else q_head
            memory_parts.append(memory_retrieve(mq, memory))
            if past + head == L:
                mk = self.rotate(keys, seg_positions) if self.memory_rope else keys
                memory = memory_update(mk, values, memory, self.memory_update)
                keys, values = keys[:, :, :0], values[:, :, :0]
        if head < n:
            # The rest starts at a segment boundary: the parallel path, then keep the unfinished tail as state.
            q_rest, k_rest, v_rest = q[:, :, head:], k[:, :, head:], v[:, :, head:]
            rest = n - head
            done = (rest // L) * L
            positions = self._segment_positions(rest, q.device)
            q_rot, k_rot = self.rotate(q_rest, positions), self.rotate(k_rest, positions)
            local_parts.append(segment_attention(q_rot, k_rot, v_rest, L))
            mq, mk = (q_rot, k_rot) if self.memory_rope else (q_rest, k_rest)
            if done > 0:
                read, memory = compressive_memory(
                    mq[:, :, :done],
                    mk[:, :, :done],
                    v_rest[:, :, :done],
                    L,
                    update=self.memory_update,
                    initial_state=memory,
                    output_final_state=True,
                )
                memory_parts.append(read)
            if rest > done:
                memory_parts.append(memory_retrieve(mq[:, :, done:], memory))
            keys, values = k_rest[:, :, done:], v_rest[:, :, done:]
        local = torch.cat(local_parts, dim=2)
        read = torch.cat(memory_parts, dim=2)
        return local, read, InfiniState(memory, keys, values)


class LocalAttention(_Projections):
    """Segment-local causal softmax attention, the control arm: Infini-attention's local half with the same
    segments and RoPE restarting at 0 in every segment, but no memory and no gate, so no token ever sees an
    earlier segment. It equals Infini-attention with the gate closed (g = 0) on the same projections."""

    def __init__(
        self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, rope_theta: float, *, segment_len: int
    ):
        super().__init__(hidden_size, num_heads, num_kv_heads, head_dim, rope_theta)
        self.segment_len = segment_len

    def forward(
        self, x: torch.Tensor, state: LocalState | None = None, use_cache: bool = False
    ) -> tuple[torch.Tensor, LocalState | None]:
        q, k, v = self.project(x)
        L = self.segment_len
        if state is None and not use_cache:
            positions = torch.arange(q.shape[2], device=x.device) % L
            out = segment_attention(self.rotate(q, positions), self.rotate(k, positions), v, L)
            return self.output(out), None
        # A stream: the unfinished segment's keys and values come first, so the sequence starts on a segment
        # boundary; its p earlier positions get zero queries, whose outputs are dropped.
        past = 0 if state is None else state.keys.shape[2]
        if past:
            k = torch.cat([state.keys, k], dim=2)
            v = torch.cat([state.values, v], dim=2)
            q = torch.cat([q.new_zeros(*q.shape[:2], past, q.shape[3]), q], dim=2)
        T = k.shape[2]
        positions = torch.arange(T, device=x.device) % L
        out = segment_attention(self.rotate(q, positions), self.rotate(k, positions), v, L)[:, :, past:]
        done = (T // L) * L  # tokens of finished segments: never read again
        return self.output(out), LocalState(k[:, :, done:], v[:, :, done:])
