"""Regional compilation: every decoder layer through `torch.compile`, on by default on CUDA.

All decoder layers are one class with one shape, so the first layer's graph serves all of them: compile time
does not grow with depth, and (the delta rule's segment loop being one operator, `ops/recurrence.py`) not with
sequence length either. The loss is compiled too (its upcast and cross-entropy fused); embeddings, the final
norm and the output layer stay eager.

Compilation happens at the first call, in the middle of a training step, where a failure (a missing compiler,
an unsupported PyTorch build) would stop the run. So the layers are compiled up front on a probe of the
training shape, forward and backward, under the run's autocast; the first step then finds the graph ready. If
that fails, the layers go back to eager with a warning naming the cause, and the run continues.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from infini_llama.models import causal_lm_loss


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

    def probe() -> None:
        with _autocast(param.device, autocast_dtype):
            out, _ = layer(x, None, False)  # the exact call of InfiniLlamaModel.forward, so the graph is reused
        torch.autograd.grad(out.float().square().mean(), x)

    def undo() -> None:
        for each in layers:
            each._compiled_call_impl = None  # what nn.Module.compile set; None is eager

    return _build_or_undo("the decoder layers", probe, undo, param.device)


def compile_loss(
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    device: torch.device,
    *,
    autocast_dtype: torch.dtype | None = None,
) -> Callable[..., torch.Tensor]:
    """`causal_lm_loss` compiled for logits (batch_size, seq_len, vocab_size) in the dtype autocast gives them.

    Eager, the loss writes a float32 copy of the (B·T × vocabulary) logits and then its log-softmax, and the
    backward as much again: tens of GB per step at the paper's 49,152-token vocabulary. Compiled, the shift, the
    upcast and the cross-entropy fuse into kernels that read the logits a few times and write only the gradient.
    Built now on a probe like the layers; the eager `causal_lm_loss` (with a warning) if that fails.
    """
    compiled = torch.compile(causal_lm_loss, dynamic=False)
    dtype = autocast_dtype or torch.float32
    generator = torch.Generator(device).manual_seed(0)
    logits = torch.randn(batch_size, seq_len, vocab_size, device=device, generator=generator, dtype=dtype)
    labels = torch.randint(0, vocab_size, (batch_size, seq_len), device=device, generator=generator)

    def probe() -> None:
        leaf = logits.requires_grad_()
        with _autocast(device, autocast_dtype):  # the trainer calls the loss inside its autocast: same graph
            loss = compiled(leaf, labels, reduction="sum")
        torch.autograd.grad(loss, leaf)

    built = _build_or_undo("the loss", probe, lambda: None, device)
    return causal_lm_loss if built is None else compiled


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _build_or_undo(
    what: str, probe: Callable[[], None], undo: Callable[[], None], device: torch.device
) -> float | None:
    """Run `probe` (the first call compiles); seconds it took, or None after `undo` and a warning if it failed."""
    start = time.perf_counter()
    try:
        probe()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - any compiler failure: training eagerly beats not training
        undo()
        torch._dynamo.reset()
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        warnings.warn(
            f"torch.compile of {what} failed ({type(exc).__name__}: {first_line}); training eagerly instead "
            "(slower, same results). Pass --no-compile (compile: false) to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return time.perf_counter() - start


@contextlib.contextmanager
def eager_layers(layers: nn.ModuleList) -> Iterator[None]:
    """Run `layers` eagerly inside the block (their compiled graphs are set aside, and put back after it)."""
    saved = [layer._compiled_call_impl for layer in layers]
    for layer in layers:
        layer._compiled_call_impl = None
    try:
        yield
    finally:
        for layer, compiled in zip(layers, saved, strict=True):
            layer._compiled_call_impl = compiled


def warn_evaluation_falls_back(exc: BaseException) -> None:
    """The warning for a compiled evaluation that failed (its graphs are built at the first evaluation: no grad,
    the validation shapes), after which evaluation runs eagerly and training stays compiled."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    warnings.warn(
        f"the compiled model failed in evaluation ({type(exc).__name__}: {first_line}); evaluating eagerly from "
        "now on (slower, same results), training stays compiled",
        RuntimeWarning,
        stacklevel=3,
    )
