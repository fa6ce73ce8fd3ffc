"""Distributed set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from biasloss.errors import InputError

__all__ = ["DistInfo", "any_rank", "barrier", "broadcast_buffers", "cleanup_distributed", "configure_backends",
           "gather_columns", "init_distributed", "is_distributed", "resolve_device"]


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
        raise InputError(f"--device {name!r} is not a device (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {name} asked for, but MPS is not available here")
    elif dev.type != "cpu":
        raise InputError(f"--device {name}: only cpu, cuda and mps are supported")
    return dev


def configure_backends(device: torch.device) -> None:
    """The fast settings for training and evaluating on ``device`` (nothing changes elsewhere):
    on CUDA, cuDNN benchmarks its convolution algorithms for each input shape (the loaders give
    one shape per run, the last short batch aside) and float32 matrix products and convolutions
    may use TensorFloat-32, as timm's and torchvision's training scripts do. Both trade bitwise
    run-to-run repeatability on the GPU for speed; CPU runs stay bit for bit."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True


def init_distributed(device: str | None) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on the CPU) and pick the
    device: ``cuda:LOCAL_RANK`` when CUDA is there and ``device`` does not say otherwise; the
    device's backends are set for speed (:func:`configure_backends`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    configure_backends(dev)
    info = DistInfo(rank, world, local)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return info, dev


def is_distributed() -> bool:
    """Whether this process is one rank of an initialised process group of more than one."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_rank(flags: list[bool | torch.Tensor], device: torch.device) -> list[bool]:
    """Each of ``flags`` (a Python bool or a 0-d tensor on ``device``) OR-ed over every rank, in
    one all-reduce and one device-to-host copy: the ranks of a run take every decision that ends
    an epoch (a stop signal, a non-finite loss) together, at the same step, so that no rank waits
    in a collective another rank has left. Every rank must call it; outside torchrun it returns
    the flags (still one copy). Each tensor flag is "true" when it is non-zero."""
    values = torch.zeros(len(flags), device=device)
    for i, flag in enumerate(flags):
        if isinstance(flag, torch.Tensor):
            values[i] = flag.to(values.dtype)
        elif flag:
            values[i] = 1.0  # a fill on the device, not a host-to-device copy
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [v != 0 for v in values.tolist()]


def barrier() -> None:
    """Wait for every rank (nothing outside torchrun): ranks that leave together leave after rank 0
    has written its files, so torchrun never stops rank 0 for a rank that finished first."""
    if is_distributed():
        dist.barrier()


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
    if not is_distributed():
        return tensor
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensor)
    return torch.cat(parts, dim=1)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
