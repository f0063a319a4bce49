"""Decoding an Infini-attention model one token at a time, on fixed-shape state, as a CUDA graph on CUDA.

`model.stream` handles any chunk, so its state changes shape with every token (the unfinished segment's keys
grow by one) and each token costs hundreds of small kernel launches. Here each layer's state has one shape for
the whole generation: the memory (M, z), a buffer of `segment_len` keys and values for the unfinished segment,
and one fill counter shared by all layers. A token writes its key and value at the counter's slot, attends to
the filled slots (a mask hides the rest) and reads the memory; the token that fills the buffer also commits the
segment to the memory and empties the buffer. So a step is the same work after 4K tokens as after 1M.

Fixed shapes make the step capturable: on CUDA each layer's step is compiled once (all layers share the graph,
as in training) and the whole step, plain or committing, is captured in two CUDA graphs and replayed. On CPU the
same step runs eagerly. The outputs equal `stream`'s up to the order of a few sums (tested at float64).

Rotated keys are kept next to the un-rotated ones: a key's rotation depends only on its slot, so it is computed
once when the key is written instead of for the whole buffer at every step; the memory reads un-rotated keys.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from infini_llama.layers import DecoderLayer, InfiniState, apply_rope, rope_tables
from infini_llama.ops import MemoryState, memory_retrieve, memory_update, repeat_kv, state_dtype_for


class _LayerStep(nn.Module):
    """One decoder layer's decode step and its fixed-shape state (buffers, so that `compile` sees them as the
    module's own data): memory M (B, Hkv, D, Dv), z (B, Hkv, D); keys, rotated keys and values of the
    unfinished segment (B, Hkv, L, D)."""

    def __init__(self, layer: DecoderLayer, batch_size: int, dtype: torch.dtype):
        super().__init__()
        self.layer = layer
        attn = layer.self_attn
        device = attn.q_proj.weight.device
        B, H, D, L = batch_size, attn.num_kv_heads, attn.head_dim, attn.segment_len
        state_dtype = state_dtype_for(dtype)
        self.register_buffer("M", torch.zeros(B, H, D, D, device=device, dtype=state_dtype), persistent=False)
        self.register_buffer("z", torch.zeros(B, H, D, device=device, dtype=state_dtype), persistent=False)
        for name in ("keys", "rotated_keys", "values"):
            self.register_buffer(name, torch.zeros(B, H, L, D, device=device, dtype=dtype), persistent=False)

    def forward(
        self, x: torch.Tensor, slot: torch.Tensor, visible: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        commit: bool,
    ) -> torch.Tensor:  # fmt: skip
        """x: (B, 1, C); slot: (1,) the fill counter; visible: (1, 1, 1, L) the slots ≤ counter; cos, sin: (1, D) of the
        slot's position. Returns the layer's output (B, 1, C) and updates the state in place."""
        layer, attn = self.layer, self.layer.self_attn
        h = layer.input_layernorm(x)
        q, k, v = attn.project(h)  # (B, H, 1, D), (B, Hkv, 1, D) twice
        q_rot, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        self.keys.index_copy_(2, slot, k)
        self.rotated_keys.index_copy_(2, slot, k_rot)
        self.values.index_copy_(2, slot, v)
        groups = attn.num_heads // attn.num_kv_heads
        local = F.scaled_dot_product_attention(
            q_rot, repeat_kv(self.rotated_keys, groups), repeat_kv(self.values, groups), attn_mask=visible
        )
        memory = memory_retrieve(q_rot if attn.memory_rope else q, MemoryState(self.M, self.z))
        g = attn.gate().to(local.dtype)[None, :, None, None]
        x = x + attn.output(g * memory.to(local.dtype) + (1.0 - g) * local)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        if commit:
            keys = self.rotated_keys if attn.memory_rope else self.keys
            M, z = memory_update(keys, self.values, MemoryState(self.M, self.z), attn.memory_update)
            self.M.copy_(M)
            self.z.copy_(z)
        return x


# Dynamo compiles one code object, the layer step's, for every decoder: an entry per (layer, plain or committing
# step, shape) where guards tell them apart. Past its recompile limit (8 by default) it stops compiling, which
# under fullgraph=True is an error, so a model decoding at a few batch sizes would fall back to eager decoding.
# The decoder's own compiled calls run under limits that leave room for many decoders.
DECODE_RECOMPILE_LIMIT = 1024


def _decode_compile_limits():
    """A context in which Dynamo may keep DECODE_RECOMPILE_LIMIT entries of a code object (the option's name
    differs between torch releases: `recompile_limit`, earlier `cache_size_limit`)."""
    import torch._dynamo.config as dynamo_config

    names = [
        n for n in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit") if hasattr(dynamo_config, n)
    ]
    return dynamo_config.patch(**{name: max(getattr(dynamo_config, name), DECODE_RECOMPILE_LIMIT) for name in names})


class StaticDecoder:
    """Greedy or sampled decoding of an Infini-attention `InfiniLlamaForCausalLM` at a fixed batch size.

        decoder = StaticDecoder(model, batch_size=1)
        decoder.load(states, filled)          # the state `model.stream` returned (None: an empty one)
        logits = decoder.step(next_ids)       # (B, 1) ids -> (B, V) logits of the next token

    `graphs` (default: on CUDA) replays the whole step as a CUDA graph, and `compile` (default: as `graphs`)
    compiles each layer's step first; the model must stay in eval mode and its weights in place while the
    decoder is used. If compiling or capturing fails, the decoder says why in a warning and steps eagerly (the
    same tokens, slower). `step` returns a buffer that the next step overwrites.
    """

    def __init__(self, model: nn.Module, batch_size: int, *, graphs: bool | None = None, compile: bool | None = None):
        config = model.config
        if config.attention != "infini":
            raise ValueError(
                f"StaticDecoder decodes Infini-attention models; this one has attention={config.attention!r}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        embed = model.get_input_embeddings().weight
        self.device, self.dtype = embed.device, embed.dtype
        self.batch_size, self.segment_len = batch_size, config.segment_len
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        if self.graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device; pass graphs=False")
        self.layers = [_LayerStep(layer, batch_size, self.dtype) for layer in model.model.layers]
        L = self.segment_len
        cos, sin = rope_tables(torch.arange(L, device=self.device), config.head_dim, config.rope_theta, self.dtype)
        self.cos, self.sin = cos, sin  # (L, D): the tables `stream` computes, for every slot
        self.slots = torch.arange(L, device=self.device)
        self.slot = torch.zeros(1, dtype=torch.long, device=self.device)  # the fill counter, on the device
        self.filled = 0  # the same counter, on the host: it picks the plain or the committing step
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self._graphs: dict[bool, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # commit -> (graph, its logits)
        self.compiled = self.graphs if compile is None else compile
        if self.compiled or self.graphs:
            self._build()

    def _build(self) -> None:
        """Compile the layer steps and capture the graphs (each as asked), or go back to eager decoding."""
        try:
            if self.compiled:
                for step in self.layers:
                    step.compile(fullgraph=True, dynamic=False)
            if self.graphs:
                self._capture()
            elif self.compiled:  # compile now, on throw-away steps, not in the middle of the first tokens
                with torch.no_grad():
                    self._run(False)
                    self._run(True)
                self.load(None)
        except Exception as exc:  # noqa: BLE001 - any compiler or capture failure: decoding eagerly beats failing
            for step in self.layers:
                step._compiled_call_impl = None  # what nn.Module.compile set; None is eager
            self._graphs.clear()
            self.graphs = self.compiled = False
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.load(None)
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            warnings.warn(
                f"StaticDecoder: {'capturing' if self._capturing else 'compiling'} the decode step failed "
                f"({type(exc).__name__}: {first_line}); decoding eagerly instead (same tokens, slower)",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ state
    def load(self, states: tuple[InfiniState, ...] | None, filled: int | None = None) -> None:
        """Start from `states` (what `stream` returns; None: empty memory, no tokens)."""
        if states is None:
            for step in self.layers:
                for buffer in (step.M, step.z, step.keys, step.rotated_keys, step.values):
                    buffer.zero_()
            self._set_filled(0)
            return
        if len(states) != len(self.layers):
            raise ValueError(f"got {len(states)} layer states for a model of {len(self.layers)} layers")
        p = states[0].keys.shape[2]
        for step, state in zip(self.layers, states, strict=True):
            if not isinstance(state, InfiniState):
                raise ValueError(f"expected InfiniState per layer, got {type(state).__name__}")
            if state.keys.shape[0] != self.batch_size:
                raise ValueError(f"the state has batch size {state.keys.shape[0]}, the decoder {self.batch_size}")
            step.M.copy_(state.memory.M)
            step.z.copy_(state.memory.z)
            step.keys[:, :, :p].copy_(state.keys)
            step.values[:, :, :p].copy_(state.values)
            step.rotated_keys[:, :, :p].copy_(apply_rope(state.keys.to(self.dtype), self.cos[:p], self.sin[:p]))
        self._set_filled(p)

    def states(self) -> tuple[InfiniState, ...]:
        """The state after the tokens decoded so far, in `stream`'s form (copies)."""
        p = self.filled
        return tuple(
            InfiniState(MemoryState(s.M.clone(), s.z.clone()), s.keys[:, :, :p].clone(), s.values[:, :, :p].clone())
            for s in self.layers
        )

    def _set_filled(self, p: int) -> None:
        self.filled = p
        self.slot.fill_(p)

    # ------------------------------------------------------------------ steps
    @torch.no_grad()
    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per sequence, input_ids (B, 1); returns the next token's logits (B, V)."""
        if tuple(input_ids.shape) != (self.batch_size, 1):
            raise ValueError(f"step takes ids of shape ({self.batch_size}, 1), got {tuple(input_ids.shape)}")
        self.ids.copy_(input_ids)
        commit = self.filled + 1 == self.segment_len
        if self.graphs:
            graph, logits = self._graphs[commit]
            graph.replay()
        else:
            logits = self._run(commit)
        self.filled = 0 if commit else self.filled + 1
        return logits

    def _run(self, commit: bool) -> torch.Tensor:
        """The step on the fixed buffers: ids -> logits, state updated, counter advanced (wrapped at commit)."""
        if self.compiled:
            with _decode_compile_limits():
                return self._run_layers(commit)
        return self._run_layers(commit)

    def _run_layers(self, commit: bool) -> torch.Tensor:
        model = self.model
        x = model.get_input_embeddings()(self.ids)
        visible = (self.slots <= self.slot)[None, None, None, :]  # (1, 1, 1, L): the filled slots
        cos, sin = self.cos.index_select(0, self.slot), self.sin.index_select(0, self.slot)
        for step in self.layers:
            x = step(x, self.slot, visible, cos, sin, commit)
        logits = model.lm_head(model.model.norm(x))[:, -1]
        if commit:
            self.slot.zero_()
        else:
            self.slot.add_(1)
        return logits

    _capturing = False  # set while the CUDA graphs are being captured: a failure there is a capture failure

    def _capture(self) -> None:
        """Compile (on the first calls) and capture both steps; the state is reset afterwards."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.no_grad():
            for commit in (False, True, False, True):  # warm-up: compilation, cuBLAS handles, autotuning
                self._run(commit)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        pool = None
        self._capturing = True
        for commit in (False, True):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool), torch.no_grad():
                logits = self._run(commit)
            pool = graph.pool()
            self._graphs[commit] = (graph, logits)
        self._capturing = False
        self.load(None)
