"""Converting a `transformers` Llama into an InfiniLlama: the config mapping and what cannot be mapped.

The parameter names are the same, so the weights copy one to one; Infini-attention adds only the per-layer gate
β, which starts at `gate_init`. With the gate closed (hard_sigmoid with β <= -2.5 gives g = 0 exactly) and one
segment covering the input, the converted model computes the Llama's logits.
"""

from __future__ import annotations

import os

from torch import nn
from transformers import LlamaForCausalLM, PretrainedConfig

from infini_llama.models.config import InfiniLlamaConfig

# The fields a conversion may choose; everything else comes from the Llama.
INFINI_OPTIONS = ("attention", "segment_len", "memory_update", "gate_activation", "gate_init", "memory_rope", "bptt")
# The 300M study's segment; a converted model should keep segments within the context the Llama was trained on.
DEFAULT_SEGMENT_LEN = 1024


def llama_rope_theta(config: PretrainedConfig) -> float:
    """RoPE base of a Llama config, refusing any rope scaling (only plain RoPE maps onto ours)."""
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = getattr(config, "rope_scaling", None)
    if rope_type != "default" or (scaling and scaling.get("rope_type", scaling.get("type")) != "default"):
        raise ValueError(
            f"cannot convert a Llama with rope type {rope_type!r}: InfiniLlama implements plain RoPE only "
            "(rope_type 'default'); Llama 3.x style frequency scaling, linear, dynamic and YaRN do not map"
        )
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError("the Llama config gives no rope_theta (neither in rope_parameters nor as a field)")
    return float(theta)


def infini_config_from_llama(llama_config: PretrainedConfig, **infini_options) -> InfiniLlamaConfig:
    """The InfiniLlamaConfig with the Llama's architecture and the chosen Infini-attention options
    (`INFINI_OPTIONS`; segment_len defaults to 1024). Raises ValueError for what InfiniLlama cannot represent:
    attention or MLP biases, an activation other than SiLU, rope scaling."""
    if getattr(llama_config, "model_type", None) != "llama":
        raise ValueError(f"expected a Llama config (model_type 'llama'), got {llama_config.model_type!r}")
    unknown = set(infini_options) - set(INFINI_OPTIONS)
    if unknown:
        raise ValueError(
            f"from_llama takes only Infini-attention options {INFINI_OPTIONS}; got {sorted(unknown)} "
            "(the architecture comes from the Llama)"
        )
    for bias in ("attention_bias", "mlp_bias"):
        if getattr(llama_config, bias, False):
            raise ValueError(f"cannot convert a Llama with {bias}=True: InfiniLlama's projections have no biases")
    if getattr(llama_config, "hidden_act", "silu") != "silu":
        raise ValueError(f"cannot convert a Llama with hidden_act={llama_config.hidden_act!r}: only 'silu' maps")
    return InfiniLlamaConfig(
        vocab_size=llama_config.vocab_size,
        hidden_size=llama_config.hidden_size,
        intermediate_size=llama_config.intermediate_size,
        num_hidden_layers=llama_config.num_hidden_layers,
        num_attention_heads=llama_config.num_attention_heads,
        num_key_value_heads=llama_config.num_key_value_heads,
        head_dim=getattr(llama_config, "head_dim", None),
        rope_theta=llama_rope_theta(llama_config),
        rms_norm_eps=llama_config.rms_norm_eps,
        tie_word_embeddings=llama_config.tie_word_embeddings,
        bos_token_id=llama_config.bos_token_id,
        eos_token_id=llama_config.eos_token_id,
        pad_token_id=llama_config.pad_token_id,
        **{"segment_len": DEFAULT_SEGMENT_LEN, **infini_options},
    )


def load_llama(model_or_path: LlamaForCausalLM | str | os.PathLike, **load_kwargs) -> LlamaForCausalLM:
    """`model_or_path` itself if it is a LlamaForCausalLM, else `LlamaForCausalLM.from_pretrained(path,
    **load_kwargs)` (a local folder, or a hub id when online; `gguf_file=` loads a GGUF, which needs `gguf`)."""
    if isinstance(model_or_path, nn.Module):
        if not isinstance(model_or_path, LlamaForCausalLM):
            raise ValueError(f"expected a LlamaForCausalLM, got {type(model_or_path).__name__}")
        return model_or_path
    return LlamaForCausalLM.from_pretrained(model_or_path, **load_kwargs)


def copy_llama_weights(model: nn.Module, llama: LlamaForCausalLM) -> None:
    """Load the Llama's parameters into `model` by name; every parameter of `model` but the gates must be found."""
    weights = llama.state_dict()
    not_float = sorted(name for name, tensor in weights.items() if not tensor.is_floating_point())
    if not_float:
        raise ValueError(f"cannot convert quantized weights ({not_float[:3]}...): load the Llama dequantized")
    result = model.load_state_dict(weights, strict=False)
    missing = [name for name in result.missing_keys if not name.endswith("memory_gate")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"Llama weights do not map one to one: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
