"""Pure tensor functions: the compressive memory (fast and reference) and causal / segment attention."""

from infini_llama.ops.attention import causal_attention, repeat_kv, segment_attention
from infini_llama.ops.memory import compressive_memory
from infini_llama.ops.reference import compressive_memory_reference, memory_retrieve, memory_update
from infini_llama.ops.state import MEMORY_UPDATES, MemoryState, state_dtype_for

__all__ = [
    "MEMORY_UPDATES",
    "MemoryState",
    "causal_attention",
    "compressive_memory",
    "compressive_memory_reference",
    "memory_retrieve",
    "memory_update",
    "repeat_kv",
    "segment_attention",
    "state_dtype_for",
]
