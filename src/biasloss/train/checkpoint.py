"""Checkpoints written atomically and read with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from biasloss._io import TorchFileError, atomic_write, read_torch_file
from biasloss.errors import CheckpointError

__all__ = ["CheckpointError", "ForeignCheckpointError", "load_checkpoint", "save_checkpoint", "training_args"]

#: Keys every checkpoint written by ``biasloss train`` holds.
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "loss", "args")


class ForeignCheckpointError(CheckpointError):
    """A readable file that is not a checkpoint ``biasloss train`` wrote (another program's
    weights, or a checkpoint that does not say what it trained)."""


#: What a checkpoint's ``args`` must name to be evaluated, exported or measured.
TRAINING_KEYS = ("dataset", "model")


def training_args(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> dict[str, Any]:
    """The ``biasloss train`` arguments a checkpoint was written with, as saved (an older
    version's lack some: :func:`biasloss.train.saved_run.settings_of` fills them);
    :class:`ForeignCheckpointError` when they do not name the dataset and the model, or when the
    checkpoint is a detector's."""
    if "best_map" in ckpt:  # what 'biasloss detect train' writes beside the classifier's keys
        raise ForeignCheckpointError(f"{os.fspath(path)} is a detector's checkpoint ('biasloss detect train'): "
                                     "evaluate it with 'biasloss detect eval', draw it with 'biasloss detect show'")
    saved = ckpt.get("args")
    if not isinstance(saved, dict) or any(not isinstance(saved.get(k), str) for k in TRAINING_KEYS):
        raise ForeignCheckpointError(f"{os.fspath(path)} holds no training arguments naming its "
                                     f"{' and '.join(TRAINING_KEYS)}; not a checkpoint 'biasloss train' wrote")
    return saved


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` through a temporary file and a rename, so that a crash or a
    kill mid-write leaves the previous checkpoint intact, never a truncated one."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; :class:`CheckpointError` if it is
    missing, corrupt or lacks the keys of a ``biasloss train`` checkpoint."""
    path = Path(path)
    if path.is_dir():
        held = [name for name in ("best.pt", "last.pt") if (path / name).is_file()]
        raise CheckpointError(f"{path} is a directory, not a checkpoint" + (
            f"; give one of its checkpoints: {' or '.join(str(path / name) for name in held)}" if held else ""))
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = read_torch_file(path, map_location)
    except TorchFileError as e:
        raise CheckpointError(str(e).replace("cannot read ", "cannot read checkpoint ", 1)) from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ForeignCheckpointError(f"{path} is not a biasloss training checkpoint (missing {', '.join(missing)})")
    if state.get("recipe") is not None and not isinstance(state["recipe"], dict):
        raise CheckpointError(f"{path}: its 'recipe' is a {type(state['recipe']).__name__}, not the mapping of "
                              "settings biasloss train writes")
    return state
