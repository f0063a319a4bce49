"""RoPE scaling at evaluation: unscaled where it must be, transformers' LlamaForCausalLM where it scales."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from infini_llama import InfiniLlamaConfig, InfiniLlamaForCausalLM
from infini_llama.eval import PasskeyGridConfig, run_passkey_grid
from infini_llama.eval.records import read_rows
from infini_llama.eval.rope_scaling import rope_scaled, rope_scaling, rope_scaling_label

VOCAB, TRAIN_LEN = 97, 16


def full_model(dtype=torch.float64) -> InfiniLlamaForCausalLM:
    torch.manual_seed(0)
    config = InfiniLlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attention="full",
    )  # fmt: skip
    return InfiniLlamaForCausalLM(config).to(dtype).eval()


def hf_llama(ours: InfiniLlamaForCausalLM, rope_parameters: dict, max_positions: int) -> LlamaForCausalLM:
    """transformers' Llama with the same weights and the given rope_parameters."""
    c = ours.config
    config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, rms_norm_eps=c.rms_norm_eps, tie_word_embeddings=False,
        max_position_embeddings=max_positions, rope_parameters={**rope_parameters, "rope_theta": c.rope_theta},
        attn_implementation="sdpa",
    )  # fmt: skip
    hf = LlamaForCausalLM(config).to(next(ours.parameters()).dtype).eval()
    hf.load_state_dict(ours.state_dict(), strict=True)
    return hf


def tokens(T: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(T))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def test_no_scaling_within_the_training_length_and_factor_one():
    model, x = full_model(), tokens(40)
    plain = model(x).logits
    with rope_scaled(model, rope_scaling("dynamic", train_len=40)):
        assert torch.equal(model(x).logits, plain), "dynamic NTK up to the training length is plain RoPE, bit for bit"
    with rope_scaled(model, rope_scaling("yarn", train_len=TRAIN_LEN, factor=1.0)):
        # YaRN with factor 1 interpolates nothing; its blend of two equal frequency sets rounds within an ulp.
        assert relative_error(model(x).logits, plain) < 1e-6
    assert torch.equal(model(x).logits, plain), "the scaling is switched off on exit"


@pytest.mark.parametrize(
    "rope_type,factor,max_positions",
    [("dynamic", 1.0, TRAIN_LEN), ("dynamic", 2.0, TRAIN_LEN), ("yarn", 4.0, 4 * TRAIN_LEN)],
    ids=["dynamic-1", "dynamic-2", "yarn-4"],
)
@torch.no_grad()
def test_scaled_model_equals_transformers_llama_with_the_same_scaling(rope_type, factor, max_positions):
    model, x = full_model(), tokens(3 * TRAIN_LEN + 5)
    plain = model(x).logits
    scaling = rope_scaling(rope_type, train_len=TRAIN_LEN, factor=factor)
    params = {"rope_type": rope_type, "factor": factor}
    if rope_type == "yarn":
        params["original_max_position_embeddings"] = TRAIN_LEN
    expected = hf_llama(model, params, max_positions)(x).logits
    with rope_scaled(model, scaling):
        got = model(x).logits
    assert relative_error(got, expected) < 1e-10
    assert relative_error(got, plain) > 1e-3, "beyond the training length the scaling changes the logits"


@pytest.mark.parametrize("T", [TRAIN_LEN, 2 * TRAIN_LEN, 3 * TRAIN_LEN + 5])
@torch.no_grad()
def test_yarn_by_the_length_is_yarn_with_the_factor_of_the_length(T):
    # A prompt read in one call: YaRN stretched by its length over the training length, transformers' YaRN with that
    # factor; within the training length, plain RoPE.
    model, x = full_model(), tokens(T)
    with rope_scaled(model, rope_scaling("yarn", train_len=TRAIN_LEN, factor="length")):
        got = model(x).logits
    if T <= TRAIN_LEN:
        assert torch.equal(got, model(x).logits)
        return
    factor = T / TRAIN_LEN
    params = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": TRAIN_LEN}
    expected = hf_llama(model, params, round(TRAIN_LEN * factor))(x).logits
    assert relative_error(got, expected) < 1e-10


def test_yarn_by_the_length_is_named_and_checked():
    scaling = rope_scaling("yarn", train_len=TRAIN_LEN, factor="length")
    assert scaling["per_length"] is True and rope_scaling_label(scaling) == "RoPE YaRN ×length"
    with pytest.raises(ValueError, match="only for yarn"):
        rope_scaling("dynamic", train_len=TRAIN_LEN, per_length=True)


@torch.no_grad()
def test_static_scaling_streams_chunk_by_chunk_like_one_forward():
    model, x = full_model(), tokens(50)
    with rope_scaled(model, rope_scaling("yarn", train_len=TRAIN_LEN, factor=4.0)):
        whole = model(x).logits
        state, parts = None, []
        for chunk in x.split(16, dim=1):
            logits, state = model.stream(chunk, state)
            parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-10, atol=1e-10)


def test_grid_records_the_scaling_and_refuses_what_cannot_be_scaled(bpe_tok, micro_model, tmp_path):
    scaling = rope_scaling("dynamic", train_len=64)
    grid = PasskeyGridConfig(lengths=(160,), depths=(0.5,), samples=2, progress=False, rope_scaling=scaling)
    full = micro_model(len(bpe_tok), attention="full")
    summary = run_passkey_grid(full, bpe_tok, grid, tmp_path / "scaled")
    assert summary["settings"]["rope_scaling"] == scaling
    assert summary["label"].endswith("(RoPE dynamic NTK)") and rope_scaling_label({**scaling, "factor": 8}) == (
        "RoPE dynamic NTK ×8"
    )
    plain_grid = PasskeyGridConfig(lengths=(160,), depths=(0.5,), samples=2, progress=False)
    run_passkey_grid(full, bpe_tok, plain_grid, tmp_path / "plain")
    logprobs = [
        [r["answer_logprob"] for r in read_rows(tmp_path / run / "samples.jsonl")] for run in ("scaled", "plain")
    ]
    assert logprobs[0] != logprobs[1], "the grid ran the scaled model (prompts of 160 tokens, trained at 64)"
    with pytest.raises(ValueError, match="restarts positions in every segment"):
        run_passkey_grid(micro_model(len(bpe_tok)), bpe_tok, grid, tmp_path / "infini")
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        PasskeyGridConfig(rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="rope scaling must be one of"):
        rope_scaling("linear", train_len=64)
