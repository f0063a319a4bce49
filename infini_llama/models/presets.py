"""Named model sizes. Training recipes for them live with the trainer; these are architectures only."""

from __future__ import annotations

import inspect

from infini_llama.models.config import InfiniLlamaConfig

PRESETS: dict[str, dict] = {
    # CPU demo: trains at thousands of tokens/s on 2 cores; 4 segments of 64 in a 256-token window.
    "tiny": dict(
        vocab_size=4096, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, segment_len=64, tie_word_embeddings=True,
    ),
    # A GPU study in minutes: ~42M parameters, segment 256.
    "mini": dict(
        vocab_size=8192, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=8, segment_len=256,
    ),
    # The 300M study (arXiv 2512.23862, its code's config): 302,015,488 parameters without the 96 gates.
    "paper-300m": dict(
        vocab_size=49152, hidden_size=1024, intermediate_size=4096, num_hidden_layers=12,
        num_attention_heads=8, num_key_value_heads=8, segment_len=1024, tie_word_embeddings=False,
        rope_theta=10000.0, rms_norm_eps=1e-5, memory_update="delta", gate_activation="hard_sigmoid",
    ),
}  # fmt: skip

CONFIG_FIELDS = frozenset(inspect.signature(InfiniLlamaConfig.__init__).parameters) - {"self", "kwargs"}


def config_from_preset(name: str, **overrides) -> InfiniLlamaConfig:
    """The preset `name` ("tiny", "mini", "paper-300m") with any config field overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    unknown = set(overrides) - CONFIG_FIELDS
    if unknown:
        raise ValueError(f"unknown config field(s) {sorted(unknown)}; valid fields: {sorted(CONFIG_FIELDS)}")
    return InfiniLlamaConfig(**{**PRESETS[name], **overrides})
