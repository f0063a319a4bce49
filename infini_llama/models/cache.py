"""InfiniCache: the per-layer streaming states of an InfiniLlama model as a `transformers` Cache.

`generate` needs a `Cache` object that lives across forward calls. An Infini-attention layer's state is not a
growing key/value list but `InfiniState`: the compressive memory of every finished segment plus the keys and
values of the unfinished one (committed into the memory by the layer when the segment fills), so its size
does not depend on how many tokens came before. The full-attention baseline's state is `KVState`, which does
grow; the segment-local control's is `LocalState`, the unfinished segment alone. The cache holds these
NamedTuples as they are and hands them to the layers; the layers return new ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from infini_llama.layers import InfiniState, KVState, LocalState

LayerState = InfiniState | KVState | LocalState


def map_state(state: NamedTuple, fn: Callable[[torch.Tensor], torch.Tensor]) -> NamedTuple:
    """The same (possibly nested) NamedTuple of tensors with `fn` applied to every tensor."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    return type(state)(*(map_state(part, fn) for part in state))


def state_tensors(state: NamedTuple) -> list[torch.Tensor]:
    """Every tensor of a (possibly nested) NamedTuple state."""
    if isinstance(state, torch.Tensor):
        return [state]
    return [tensor for part in state for tensor in state_tensors(part)]


class StreamingLayer(CacheLayerMixin):
    """One layer's streaming state (`InfiniState`, `KVState` or `LocalState`) and the number of tokens it has seen."""

    is_compileable = False
    # The memory cannot give back tokens once a segment is committed, so generation that rolls the cache back
    # (assisted decoding) is refused rather than silently wrong.
    is_croppable = False
    supports_early_init = False

    def __init__(self, state: LayerState | None = None, seen_tokens: int = 0):
        super().__init__()
        self.state = state
        self.seen_tokens = seen_tokens
        self.is_initialized = state is not None

    def __repr__(self) -> str:
        kind = "empty" if self.state is None else type(self.state).__name__
        return f"{type(self).__name__}({kind}, seen_tokens={self.seen_tokens})"

    def set_state(self, state: LayerState, num_new_tokens: int) -> None:
        self.state = state
        self.seen_tokens += num_new_tokens
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise NotImplementedError(
            "StreamingLayer is filled by InfiniLlamaForCausalLM.forward with whole layer states, not key/value tensors"
        )

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        raise NotImplementedError(
            "StreamingLayer is filled by InfiniLlamaForCausalLM.forward with whole layer states, not key/value tensors"
        )

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_max_length(self) -> int:
        return -1  # no maximum: the memory takes any number of tokens

    get_max_cache_shape = get_max_length  # the same method's name before transformers 5.24

    def reset(self) -> None:
        self.state, self.seen_tokens, self.is_initialized = None, 0, False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise ValueError(
                "an InfiniCache cannot drop tokens: they may already be compressed into the memory; "
                "re-run the prefix instead of cropping (assisted decoding is not supported)"
            )

    def _map_batch(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.state is not None:
            self.state = map_state(self.state, fn)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t[indices])


class InfiniCache(Cache):
    """Per-layer streaming states (`InfiniState` for Infini-attention, `KVState` for the baseline, `LocalState` for
    the local control) for `generate`.

    `InfiniCache()` starts empty; `InfiniCache(states, seen_tokens)` wraps the tuple returned by
    `InfiniLlamaForCausalLM.stream` after `seen_tokens` tokens, so a long prompt streamed chunk by chunk can be
    continued with `generate(prompt_ids, cache=cache)` (generate feeds only the tokens the cache has
    not seen). `states` gives the tuple back. The model updates the cache in place.
    """

    def __init__(self, states: Sequence[LayerState] | None = None, seen_tokens: int = 0):
        if seen_tokens < 0:
            raise ValueError(f"seen_tokens must be >= 0, got {seen_tokens}")
        if states is None and seen_tokens:
            raise ValueError(f"an empty InfiniCache has seen no tokens; got seen_tokens={seen_tokens}")
        layers = [] if states is None else [StreamingLayer(state, seen_tokens) for state in states]
        super().__init__(layers=layers)

    @property
    def states(self) -> tuple[LayerState, ...] | None:
        """The per-layer states, in the form `stream` takes and returns; None before the first forward."""
        if not self.layers:
            return None
        return tuple(layer.state for layer in self.layers)

    def set_states(self, states: Sequence[LayerState], num_new_tokens: int) -> None:
        """Store the layers' states after `num_new_tokens` more tokens."""
        if self.layers and len(states) != len(self.layers):
            raise ValueError(f"got {len(states)} layer states for a cache of {len(self.layers)} layers")
        if not self.layers:
            self.layers = [StreamingLayer() for _ in states]
        for layer, state in zip(self.layers, states, strict=True):
            layer.set_state(state, num_new_tokens)

    def numel(self) -> int:
        """Elements held over all layers: constant in the context length for Infini layers, linear for KV."""
        return sum(t.numel() for layer in self.layers if layer.state is not None for t in state_tensors(layer.state))
