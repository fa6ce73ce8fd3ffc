"""Distributed set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "broadcast_buffers", "cleanup_distributed", "gather_columns", "init_distributed",
           "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The device ``--device`` names (default: CUDA where there is one, else the CPU); a
    ``ValueError`` naming the flag for a name that is no device or a device this machine lacks."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name} asked for, but MPS is not available here")
    elif dev.type != "cpu":
        raise ValueError(f"--device {name}: only cpu, cuda and mps are supported")
    return dev


def init_distributed(device: str | None) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on the CPU) and pick the
    device: ``cuda:LOCAL_RANK`` when CUDA is there and ``device`` does not say otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    info = DistInfo(rank, world, local)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return info, dev


def broadcast_buffers(*modules: torch.nn.Module | None) -> None:
    """Give every rank rank 0's buffers of ``modules`` (``None`` skipped). DDP keeps parameters
    equal, but a rank's BatchNorm running statistics (and an EMA of them) last saw its own batch:
    evaluated as they are, each rank would score slightly other weights than the ``last.pt`` rank 0
    writes, and ``eval`` of that checkpoint would not repeat the logged figure."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for module in modules:
        if module is not None:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)


def gather_columns(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``(rows, n_rank)`` tensor joined along dim 1, on the CPU, in rank order (the
    ranks' ``n`` may differ); the tensor itself outside torchrun. Every rank must call it."""
    tensor = tensor.detach().cpu()
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensor)
    return torch.cat(parts, dim=1)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
