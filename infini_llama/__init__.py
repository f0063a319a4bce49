"""infini-llama: LLaMA language models with Infini-attention, and the tools to study them.

Public API:
    InfiniLlamaConfig, InfiniLlamaForCausalLM, InfiniCache, config_from_preset, PRESETS, parameter_groups
    MemoryState, compressive_memory, compressive_memory_reference, segment_attention (from `infini_llama.ops`)
Importing the package registers model_type "infini_llama" with `AutoConfig` / `AutoModelForCausalLM`.
"""

from infini_llama.models import (
    PRESETS,
    InfiniCache,
    InfiniLlamaConfig,
    InfiniLlamaForCausalLM,
    config_from_preset,
    parameter_groups,
)
from infini_llama.ops import MemoryState, compressive_memory, compressive_memory_reference, segment_attention

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "InfiniCache",
    "InfiniLlamaConfig",
    "InfiniLlamaForCausalLM",
    "MemoryState",
    "compressive_memory",
    "compressive_memory_reference",
    "config_from_preset",
    "parameter_groups",
    "segment_attention",
]
