"""Checkpoints written atomically and read with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from biasloss._io import TorchFileError, atomic_write, read_torch_file

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

#: Keys every checkpoint written by ``biasloss train`` holds.
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "loss", "args")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or not one of ours."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` through a temporary file and a rename, so that a crash or a
    kill mid-write leaves the previous checkpoint intact, never a truncated one."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; :class:`CheckpointError` if it is
    missing, corrupt or lacks the keys of a ``biasloss train`` checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = read_torch_file(path, map_location)
    except TorchFileError as e:
        raise CheckpointError(str(e).replace("cannot read ", "cannot read checkpoint ", 1)) from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"{path} is not a biasloss training checkpoint (missing {', '.join(missing)})")
    return state
