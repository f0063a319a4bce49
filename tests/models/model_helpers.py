"""The micro model and token batches the streaming and decoding tests share."""

import torch

from infini_llama import InfiniLlamaConfig, InfiniLlamaForCausalLM

VOCAB = 97
SEGMENT = 8
T = 45  # not a multiple of SEGMENT: a stream ends inside an unfinished segment


def make_model(seed=0, **overrides) -> InfiniLlamaForCausalLM:
    """A 2-layer float64 model with GQA (4 query heads, 2 KV heads) and the gates open (g = 0.7)."""
    config = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, segment_len=SEGMENT, gate_init=1.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return InfiniLlamaForCausalLM(InfiniLlamaConfig(**{**config, **overrides})).double().eval()


def tokens(B=2, length=T, seed=1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, length), generator=torch.Generator().manual_seed(seed))
