"""The trainer's compiled decoder layers against eager ones, on a GPU (`pytest -m gpu`)."""

import pytest
import torch

from infini_llama import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.models import causal_lm_loss
from infini_llama.train.compile import compile_decoder_layers, compile_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SEGMENT = 32


def loss_and_grads(model, x, bf16):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=x, labels=x).loss
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    return loss.detach(), grads


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("update", ["delta", "linear"])
def test_compiled_layers_equal_eager_layers(update, bf16):
    torch._dynamo.reset()
    torch.manual_seed(0)
    config = config_from_preset("tiny", segment_len=SEGMENT, gate_init=1.0, memory_update=update)
    eager = InfiniLlamaForCausalLM(config).cuda().train()
    compiled = InfiniLlamaForCausalLM(config).cuda().train()
    compiled.load_state_dict(eager.state_dict())
    T = 5 * SEGMENT + 7  # odd: a short last segment
    x = torch.randint(0, config.vocab_size, (2, T), device="cuda")
    seconds = compile_decoder_layers(compiled.model.layers, 2, T, autocast_dtype=torch.bfloat16 if bf16 else None)
    assert seconds is not None and seconds > 0
    loss, grads = loss_and_grads(eager, x, bf16)
    loss_c, grads_c = loss_and_grads(compiled, x, bf16)
    tol = 2e-2 if bf16 else 1e-4
    assert abs(loss_c.item() - loss.item()) < tol * abs(loss.item())
    for a, b in zip(grads_c, grads, strict=True):
        assert ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item() < (5e-2 if bf16 else 1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_compiled_loss_equals_the_eager_loss(dtype):
    torch._dynamo.reset()
    B, T, V = 2, 77, 1000  # odd length
    loss_fn = compile_loss(B, T, V, torch.device("cuda"), autocast_dtype=None if dtype == torch.float32 else dtype)
    assert loss_fn is not causal_lm_loss
    logits = torch.randn(B, T, V, device="cuda", dtype=dtype)
    labels = torch.randint(0, V, (B, T), device="cuda")
    labels[0, 5:9] = -100  # ignored targets
    results = []
    for fn in (loss_fn, causal_lm_loss):
        leaf = logits.clone().requires_grad_()
        loss = fn(leaf, labels, reduction="sum")
        results.append((loss.detach(), torch.autograd.grad(loss, leaf)[0].float()))
    (loss, grad), (ref_loss, ref_grad) = results
    assert abs(loss.item() - ref_loss.item()) < 1e-5 * abs(ref_loss.item())
    assert ((grad - ref_grad).norm() / ref_grad.norm()).item() < (1e-5 if dtype == torch.float32 else 1e-2)
