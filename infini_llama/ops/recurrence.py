"""The delta rule's recurrence over segments as one opaque operator, forward and backward.

M_{s+1} = M_s + kv_s − A_s M_s is the only loop over segments in the fast memory op. Written as plain Python,
`torch.compile` unrolls it: the graph, and the compile time, grow with the number of segments (a 64K-token
sequence of 1K segments traces 64 steps forward and 64 backward, in every layer's graph). As custom operators
(forward and backward each one node) the loop stays a loop and a compiled layer is the same graph at any length.
The backward is the recurrence's adjoint, run in reverse:

    g_kv_s = g_{s+1},   g_A_s = −g_{s+1} M_sᵀ,   g_s = g_{s+1} − A_sᵀ g_{s+1} + g_before_s

with g_s cut to 0 where the forward detached M_s (truncated backprop every `detach_every` segments).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.library.custom_op("infini_llama::delta_recurrence", mutates_args=())
def _delta_recurrence_op(A: Tensor, kv: Tensor, M0: Tensor, detach_every: int) -> tuple[Tensor, Tensor]:
    before = kv.new_empty(kv.shape)
    M = M0
    for s in range(A.shape[2]):
        before[:, :, s] = M
        M = M + kv[:, :, s] - A[:, :, s] @ M
    return before, M.clone()  # a fresh tensor even for zero segments: outputs must not alias inputs


@_delta_recurrence_op.register_fake
def _(A, kv, M0, detach_every):
    return kv.new_empty(kv.shape), M0.new_empty(M0.shape)


@torch.library.custom_op("infini_llama::delta_recurrence_backward", mutates_args=())
def _delta_recurrence_backward_op(
    A: Tensor, before: Tensor, g_before: Tensor, g_final: Tensor, detach_every: int
) -> tuple[Tensor, Tensor, Tensor]:
    g_A = A.new_empty(A.shape)
    g_kv = before.new_empty(before.shape)
    g = g_final
    for s in reversed(range(A.shape[2])):
        g_kv[:, :, s] = g
        g_A[:, :, s] = -(g @ before[:, :, s].transpose(-1, -2))
        g = g - A[:, :, s].transpose(-1, -2) @ g + g_before[:, :, s]
        if detach_every and s > 0 and s % detach_every == 0:
            g = torch.zeros_like(g)  # M_s was detached here: nothing reaches earlier segments
    return g_A, g_kv, g.clone()


@_delta_recurrence_backward_op.register_fake
def _(A, before, g_before, g_final, detach_every):
    return A.new_empty(A.shape), before.new_empty(before.shape), g_final.new_empty(g_final.shape)


def _setup_context(ctx, inputs, output):
    A, _, _, detach_every = inputs
    ctx.save_for_backward(A, output[0])
    ctx.detach_every = detach_every


def _backward(ctx, g_before, g_final):
    A, before = ctx.saved_tensors
    g_A, g_kv, g_M0 = _delta_recurrence_backward_op(
        A, before, g_before.contiguous(), g_final.contiguous(), ctx.detach_every
    )
    return g_A, g_kv, g_M0, None


_delta_recurrence_op.register_autograd(_backward, setup_context=_setup_context)


def delta_recurrence(A: Tensor, kv: Tensor, M0: Tensor, detach_every: int | None = None) -> tuple[Tensor, Tensor]:
    """M_s = M_{s-1} + kv_s − A_s M_{s-1} over segments (dim 2); returns the stack of M_{s-1} and M_S.

    A: (B, H, S, D, D), kv: (B, H, S, D, Dv), M0: (B, H, D, Dv), all one dtype. `detach_every=k` cuts the
    gradient at every k-th segment boundary (None: full backprop). Differentiable w.r.t. A, kv and M0.
    """
    return _delta_recurrence_op(A.contiguous(), kv.contiguous(), M0.contiguous(), detach_every or 0)
