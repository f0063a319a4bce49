"""InfiniLlamaConfig: one validated config for every arm (Infini-attention, the full-attention baseline and the
segment-local control)."""

from __future__ import annotations

from transformers import PretrainedConfig

from infini_llama.layers import GATE_ACTIVATIONS
from infini_llama.ops import MEMORY_UPDATES

ATTENTIONS = ("infini", "full", "local")


class InfiniLlamaConfig(PretrainedConfig):
    """A LLaMA (RMSNorm, SwiGLU, RoPE, GQA, no biases) whose attention is Infini-attention, full attention or
    segment-local attention.

    Infini-attention fields: `segment_len` (tokens per segment), `memory_update` ("delta" or "linear"),
    `gate_activation` ("hard_sigmoid" = clamp(0.2β + 0.5, 0, 1), as in the 300M study's code, or "sigmoid"),
    `gate_init` (β at initialisation; 0 gives g = 0.5 for both activations), `gate_trainable` (False: β stays at
    `gate_init`, a frozen gate), `memory_rope` (memory reads and writes RoPE'd q/k; default False, the paper's
    choice), `bptt` ("full", "none" or a number of segments after which the memory's graph is cut).
    `attention="full"` ignores all of them and builds the baseline; `attention="local"` (the memory-free control)
    keeps only `segment_len`: Infini-attention's local attention with no memory and no gate.
    `initializer_range` None means 1 / sqrt(hidden_size), the study's init.
    """

    model_type = "infini_llama"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 8192,
        hidden_size: int = 256,
        intermediate_size: int = 1024,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-5,
        tie_word_embeddings: bool = False,
        attention: str = "infini",
        segment_len: int = 128,
        memory_update: str = "delta",
        gate_activation: str = "hard_sigmoid",
        gate_init: float = 0.0,
        gate_trainable: bool = True,
        memory_rope: bool = False,
        bptt: str | int = "full",
        initializer_range: float | None = None,
        max_position_embeddings: int = 1 << 20,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = hidden_size // max(num_attention_heads, 1) if head_dim is None else head_dim
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.attention = attention
        self.segment_len = segment_len
        self.memory_update = memory_update
        self.gate_activation = gate_activation
        self.gate_init = gate_init
        self.gate_trainable = gate_trainable
        self.memory_rope = memory_rope
        self.bptt = bptt
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate()

    @property
    def init_std(self) -> float:
        return self.initializer_range if self.initializer_range is not None else self.hidden_size**-0.5

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field and what it must be."""
        for name in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "segment_len",
        ):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.memory_update not in MEMORY_UPDATES:
            raise ValueError(f"memory_update must be one of {MEMORY_UPDATES}, got {self.memory_update!r}")
        if self.gate_activation not in GATE_ACTIVATIONS:
            raise ValueError(f"gate_activation must be one of {GATE_ACTIVATIONS}, got {self.gate_activation!r}")
        if not isinstance(self.gate_trainable, bool):
            raise ValueError(f"gate_trainable must be true or false, got {self.gate_trainable!r}")
        bptt_ok = self.bptt in ("full", "none") or (
            isinstance(self.bptt, int) and not isinstance(self.bptt, bool) and self.bptt >= 1
        )
        if not bptt_ok:
            raise ValueError(f"bptt must be 'full', 'none' or an integer >= 1 (segments), got {self.bptt!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if self.initializer_range is not None and not self.initializer_range > 0:
            raise ValueError(f"initializer_range must be None or > 0, got {self.initializer_range!r}")
