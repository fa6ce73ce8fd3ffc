"""Reading ``torch.save`` files with one-line errors (shared by checkpoints and weight files)."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

__all__ = ["TorchFileError", "atomic_write", "atomic_write_text", "read_torch_file"]


class TorchFileError(ValueError):
    """A file that ``torch.load(..., weights_only=True)`` cannot read."""


def read_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain Python data only, never code.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: as ``open`` does.
        TorchFileError: not a ``torch.save`` file, truncated, or holding objects other than tensors
            and plain data (the message says which, in one line).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        if first.startswith("Weights only load failed"):
            reason = "not a torch.save file, or it holds objects other than tensors and plain Python data"
        else:
            reason = first or "not a torch.save file"
        raise TorchFileError(f"cannot read {os.fspath(path)}: {reason}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TorchFileError(f"cannot read {os.fspath(path)}: {first} (truncated or corrupt?)") from None


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], object], *, binary: bool = True) -> Path:
    """Write ``path`` all or nothing: ``write(f)`` fills a fresh temporary file beside it (never a
    fixed name an existing link could redirect), which is flushed to disk and renamed over
    ``path``. A crash or a kill mid-write leaves the previous file intact and no partial one. The
    parent directory is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a text."""
    return atomic_write(path, lambda f: f.write(text), binary=False)
