"""CUDA checks, run on a GPU machine with `pytest -m gpu` (CI has no GPU, so they are deselected there)."""

import pytest
import torch

from infini_llama import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.ops import compressive_memory, compressive_memory_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_fast_op_equals_reference_on_cuda(update):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 8, 1000, 64, device="cuda", generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 4, 1000, 64, device="cuda", generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 4, 1000, 32, device="cuda", generator=g, dtype=torch.float64, requires_grad=True)
    out, _ = compressive_memory(q, k, v, 128, update=update)
    ref, _ = compressive_memory_reference(q, k, v, 128, update=update)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("attention", ["infini", "full"])
def test_bf16_autocast_tracks_fp32(attention):
    torch.manual_seed(0)
    config = config_from_preset("tiny", attention=attention, segment_len=32, gate_init=1.0)
    model = InfiniLlamaForCausalLM(config).cuda()
    x = torch.randint(0, config.vocab_size, (2, 64 * 32), device="cuda")
    with torch.no_grad():
        fp32 = model(x, labels=x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(x, labels=x)
            _, state = model.stream(x)
    assert torch.isfinite(bf16.logits).all()
    assert abs(bf16.loss.item() - fp32.loss.item()) < 0.02
    if attention == "infini":
        assert state[0].memory.M.dtype == torch.float32


def test_streaming_equals_batched_on_cuda():
    torch.manual_seed(0)
    config = config_from_preset("tiny", segment_len=16, gate_init=1.0)
    model = InfiniLlamaForCausalLM(config).cuda().double().eval()
    x = torch.randint(0, config.vocab_size, (2, 75), device="cuda")
    with torch.no_grad():
        expected = model(x).logits
    state, outs = None, []
    for start in range(0, 75, 7):
        logits, state = model.stream(x[:, start : start + 7], state)
        outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, dim=1), expected, rtol=1e-10, atol=1e-10)


def test_compiled_infini_model_trains():
    torch.manual_seed(0)
    config = config_from_preset("tiny", segment_len=64)
    model = InfiniLlamaForCausalLM(config).cuda()
    compiled = torch.compile(model)
    x = torch.randint(0, config.vocab_size, (2, 512), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager_loss = model(x, labels=x).loss
        loss = compiled(input_ids=x, labels=x).loss
    loss.backward()
    assert abs(loss.item() - eager_loss.item()) < 1e-2
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
