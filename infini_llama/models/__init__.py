"""Config and causal LM of both arms, presets, and the Auto-class registration."""

from transformers import AutoConfig, AutoModelForCausalLM

from infini_llama.models.cache import InfiniCache
from infini_llama.models.config import ATTENTIONS, InfiniLlamaConfig
from infini_llama.models.modeling import (
    GATE_PARAMETER,
    InfiniLlamaForCausalLM,
    InfiniLlamaModel,
    causal_lm_loss,
    parameter_groups,
)
from infini_llama.models.presets import PRESETS, config_from_preset

AutoConfig.register(InfiniLlamaConfig.model_type, InfiniLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(InfiniLlamaConfig, InfiniLlamaForCausalLM, exist_ok=True)

__all__ = [
    "ATTENTIONS",
    "GATE_PARAMETER",
    "PRESETS",
    "InfiniCache",
    "InfiniLlamaConfig",
    "InfiniLlamaForCausalLM",
    "InfiniLlamaModel",
    "causal_lm_loss",
    "config_from_preset",
    "parameter_groups",
]
