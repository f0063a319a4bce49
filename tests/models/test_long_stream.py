"""Numerical range over long streams under bf16: over 1,000+ segments the memory and the outputs stay finite,
and the normaliser z is what the op documents, the running sum of σ(k) = ELU(k) + 1 over every token seen, so it
grows linearly with length, in float32, far below float32's range."""

import pytest
import torch
import torch.nn.functional as F

from infini_llama import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.ops import compressive_memory

SEGMENTS = 1024


pytestmark = pytest.mark.usefixtures("one_thread")


def test_memory_op_over_1024_bf16_segments_keeps_z_exact_and_everything_finite():
    B, Hq, Hkv, D, L = 1, 4, 2, 16, 16
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, Hq, SEGMENTS * L, D, generator=g).bfloat16()
    k = torch.randn(B, Hkv, SEGMENTS * L, D, generator=g).bfloat16()
    v = torch.randn(B, Hkv, SEGMENTS * L, D, generator=g).bfloat16()
    state = None
    for s in range(0, SEGMENTS * L, 128 * L):  # streamed, the state carried from chunk to chunk
        out, state = compressive_memory(
            q[:, :, s : s + 128 * L], k[:, :, s : s + 128 * L], v[:, :, s : s + 128 * L], L,
            initial_state=state, output_final_state=True,
        )  # fmt: skip
        assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert state.M.dtype == state.z.dtype == torch.float32
    assert torch.isfinite(state.M).all()
    expected_z = (F.elu(k.double()) + 1).sum(dim=2)  # Σ_t σ(k_t): (B, Hkv, D)
    assert ((state.z.double() - expected_z).abs() / expected_z).max() < 1e-5


def test_tiny_model_streams_1000_bf16_segments_with_finite_outputs_and_linear_z():
    torch.manual_seed(0)
    config = config_from_preset("tiny", segment_len=16, gate_init=1.0)  # the memory fully open
    model = InfiniLlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 1000 * 16), generator=torch.Generator().manual_seed(0))
    state, z_sums = None, []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for chunk in ids.split(50 * 16, dim=1):
            logits, state = model.stream(chunk, state)
            assert torch.isfinite(logits.float()).all()
            z_sums.append(torch.stack([layer.memory.z.double().sum() for layer in state]))
    for layer in state:
        assert layer.memory.M.dtype == layer.memory.z.dtype == torch.float32
        assert torch.isfinite(layer.memory.M).all() and torch.isfinite(layer.memory.z).all()
        assert layer.memory.z.max() < 1e6  # ~1 per token and dimension: float32 overflows near 3.4e38
    z_sums = torch.stack(z_sums)  # (chunks of 50 segments, layers)
    assert (z_sums.diff(dim=0) > 0).all()  # σ > 0: every chunk adds to z
    ratio = z_sums[-1] / z_sums[len(z_sums) // 2 - 1]  # 1,000 segments against 500
    assert ((ratio - 2).abs() < 0.05).all(), ratio
