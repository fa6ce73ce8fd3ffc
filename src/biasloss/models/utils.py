"""Small helpers any module that runs a model needs: where it lives, and eval mode for a while."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import torch
from torch import nn

from biasloss.errors import InputError

__all__ = ["BATCHNORMS", "eval_mode", "model_device", "take_indices"]

#: torch's BatchNorm layers (their shared base class is private)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
              nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)


def take_indices(num_taps: int, indices: int | list[int] | tuple[int, ...] | None) -> tuple[list[int], int]:
    """Which of ``num_taps`` feature taps timm's ``forward_intermediates(indices=...)`` asks for, and
    the last of them: all for ``None``, the last ``n`` for an int ``n``, else the given indices
    (negative ones counted from the end). An ``InputError`` for an index that is not a tap."""
    if indices is None:
        indices = num_taps
    if isinstance(indices, int):
        if not 0 < indices <= num_taps:
            raise InputError(f"indices={indices}: this model has {num_taps} feature taps")
        taken = list(range(num_taps - indices, num_taps))
    else:
        taken = [i + num_taps if i < 0 else i for i in indices]
        if not taken or any(not 0 <= i < num_taps for i in taken):
            raise InputError(f"indices={list(indices)}: this model has {num_taps} feature taps (0..{num_taps - 1})")
    return taken, max(taken)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model with neither."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode for the block; afterwards every submodule gets its own
    training flag back (not one flag for all, as ``model.train(mode)`` would set)."""
    saved = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training
