"""Processes and devices: torchrun's environment, DDP / FSDP2 wrapping, reductions and full state dicts.

One process per device. Without torchrun (no WORLD_SIZE in the environment) everything here reduces to a
single process and no process group is created.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_optimizer_state_dict
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel


class DistInfo(NamedTuple):
    """Where this process stands: its rank among world_size processes, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this process group was created here, and is destroyed by close_distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> this process's GPU if CUDA is available, else the CPU; "cuda" -> cuda:<local_rank>."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but no CUDA device is visible; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_name: str) -> DistInfo:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs) if launched by torchrun."""
    rank, world_size, local_rank = launch_env()
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = False
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        owns_group = True
    return DistInfo(rank, world_size, local_rank, device, owns_group)


def close_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


@contextlib.contextmanager
def main_process_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. building a cache), then the others (which then find it built)."""
    if not info.is_main:
        barrier(info)
    yield
    if info.is_main:
        barrier(info)


def wrap_model(model: nn.Module, mode: str, info: DistInfo, param_dtype: torch.dtype | None) -> nn.Module:
    """The model to train: itself on one process; DDP, or FSDP2 (`fully_shard` per decoder layer, then the
    root) when there are several. With FSDP2 and bf16, parameters are gathered in bf16 and gradients reduced
    in fp32; the sharded fp32 parameters stay the optimizer's master copy."""
    if info.world_size == 1:
        return model
    if mode == "ddp":
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module a wrapper trains (FSDP2 shards in place, so only DDP wraps)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Backward passes in this block reduce gradients across processes only if `enabled`: accumulation
    micro-steps skip the reduction, the last one of a step does it once."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    yield


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `tensor` over processes (in place)."""
    if info.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, info: DistInfo) -> bool:
    """True on every process if `flag` is true on any (e.g. one process received SIGTERM)."""
    if info.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """`obj` of every process, in rank order (on every process)."""
    if info.world_size == 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind an FSDP2 shard (a collective: every process must call it), else `t`."""
    return t.full_tensor() if isinstance(t, DTensor) else t


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state dicts gathered whole on the CPU, keyed by parameter names, so a checkpoint
    loads under one process, DDP or FSDP2 alike. A collective; only rank 0 receives non-empty dicts."""
    return get_state_dict(model, optimizer, options=_FULL)


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, optim_state: dict) -> None:
    """Inverse of `full_state_dicts` for the optimizer: every process passes the whole dict; FSDP2 keeps its
    own shards."""
    set_optimizer_state_dict(model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
