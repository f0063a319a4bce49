"""Regional compilation: every decoder layer through `torch.compile`, on by default on CUDA.

All decoder layers are one class with one shape, so the first layer's graph serves all of them: compile time
does not grow with depth, and (the delta rule's segment loop being one operator, `ops/recurrence.py`) not with
sequence length either. Embeddings, the final norm, the output layer and the loss stay eager.

Compilation happens at the first call, in the middle of a training step, where a failure (a missing compiler,
an unsupported PyTorch build) would stop the run. So the layers are compiled up front on a probe of the
training shape, forward and backward, under the run's autocast; the first step then finds the graph ready. If
that fails, the layers go back to eager with a warning naming the cause, and the run continues.
"""

from __future__ import annotations

import time
import warnings

import torch
from torch import nn


def resolve_compile(setting: bool | None, device: torch.device) -> bool:
    """`compile` of a TrainConfig: None (the default) compiles on CUDA only, True / False force it."""
    return device.type == "cuda" if setting is None else bool(setting)


def compile_decoder_layers(
    layers: nn.ModuleList,
    batch_size: int,
    seq_len: int,
    *,
    autocast_dtype: torch.dtype | None = None,
) -> float | None:
    """Compile each layer of `layers` (nn.Module.compile) and build the training graph now, on random hidden
    states of shape (batch_size, seq_len, hidden) that need a gradient, as the embeddings' output does.

    Returns the seconds the compilation took, or None if it failed: then every layer is eager again and a
    RuntimeWarning says why. The probe leaves no gradient on the parameters and draws from its own generator.
    """
    layer = layers[0]
    param = next(layer.parameters())
    hidden = layer.input_layernorm.weight.shape[0]
    for each in layers:
        each.compile(dynamic=False)
    generator = torch.Generator(param.device).manual_seed(0)
    x = torch.randn(batch_size, seq_len, hidden, device=param.device, generator=generator, requires_grad=True)
    autocast = torch.autocast(param.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    start = time.perf_counter()
    try:
        with autocast:
            out, _ = layer(x, None, False)  # the exact call of InfiniLlamaModel.forward, so the graph is reused
        torch.autograd.grad(out.float().square().mean(), x)
        if param.device.type == "cuda":
            torch.cuda.synchronize(param.device)
    except Exception as exc:  # noqa: BLE001 - any compiler failure: training eagerly beats not training
        for each in layers:
            each._compiled_call_impl = None  # what nn.Module.compile set; None is eager
        torch._dynamo.reset()
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        warnings.warn(
            f"torch.compile of the decoder layers failed ({type(exc).__name__}: {first_line}); training eagerly "
            "instead (slower, same results). Pass --no-compile (compile: false) to skip the attempt.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return time.perf_counter() - start
