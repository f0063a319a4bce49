"""The delta recurrence operator: registered correctly (fake tensors, autograd) and equal to the plain loop."""

import pytest
import torch

from infini_llama.ops.recurrence import _delta_recurrence_op, delta_recurrence


def _inputs(S, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = 0.1 * torch.randn(2, 3, S, 4, 4, generator=g, dtype=torch.float64)
    kv = torch.randn(2, 3, S, 4, 5, generator=g, dtype=torch.float64)
    M0 = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    return A, kv, M0


def _loop(A, kv, M0, detach_every):
    M, before = M0, []
    for s in range(A.shape[2]):
        if detach_every and s > 0 and s % detach_every == 0:
            M = M.detach()
        before.append(M)
        M = M + kv[:, :, s] - A[:, :, s] @ M
    return torch.stack(before, dim=2), M


@pytest.mark.parametrize("detach_every", [0, 1, 2])
def test_operator_passes_opcheck(detach_every):
    A, kv, M0 = (t.requires_grad_() for t in _inputs(5))
    torch.library.opcheck(_delta_recurrence_op, (A, kv, M0, detach_every))


@pytest.mark.parametrize("S", [1, 2, 7])
@pytest.mark.parametrize("detach_every", [None, 1, 3])
def test_values_and_gradients_equal_the_loop(S, detach_every):
    A, kv, M0 = _inputs(S)
    w_before, w_final = torch.randn(2, 3, S, 4, 5, dtype=torch.float64), torch.randn(2, 3, 4, 5, dtype=torch.float64)
    results = []
    for fn in (delta_recurrence, _loop):
        leaves = [t.clone().requires_grad_() for t in (A, kv, M0)]
        before, final = fn(*leaves, detach_every)
        grads = torch.autograd.grad((before * w_before).sum() + (final * w_final).sum(), leaves)
        results.append((before, final, *grads))
    for fast, ref in zip(*results, strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
