"""Reading ``torch.save`` files with one-line errors (shared by checkpoints and weight files)."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from collections.abc import Iterator
from typing import IO, Any, Callable

import torch

from biasloss.errors import InputError, InputFileNotFoundError, OutputError

__all__ = ["OutputError", "TorchFileError", "atomic_path", "atomic_write", "atomic_write_text", "read_torch_file",
           "remove_stale_temps", "writable_dir", "writable_file"]


class TorchFileError(InputError):
    """A file that ``torch.load(..., weights_only=True)`` cannot read."""


def read_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain Python data only, never code.

    Raises:
        InputFileNotFoundError: no such file (a ``FileNotFoundError``).
        TorchFileError: a directory, a file it may not read, not a ``torch.save`` file, truncated,
            or holding objects other than tensors and plain data (the message says which, in one line).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise InputFileNotFoundError(f"cannot read {os.fspath(path)}: no such file", path) from None
    except (IsADirectoryError, PermissionError) as e:
        raise TorchFileError(f"cannot read {os.fspath(path)}: {e.strerror or e}") from None
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        if first.startswith("Weights only load failed"):
            reason = "not a torch.save file, or it holds objects other than tensors and plain Python data"
        else:
            reason = first or "not a torch.save file"
        raise TorchFileError(f"cannot read {os.fspath(path)}: {reason}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as e:
        # KeyError / IndexError: the legacy unpickler reading bytes that are no pickle (a text file
        # starting with "h" is a BINGET of memo entry 116)
        first = str(e).splitlines()[0] if str(e) and not isinstance(e, (KeyError, IndexError)) else "not a torch.save file"
        raise TorchFileError(f"cannot read {os.fspath(path)}: {first} (truncated or corrupt?)") from None


# the file system's answers that mean "this output cannot be written here"
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Remove the temporary files :func:`atomic_path` left beside ``path`` when a kill or a
    crash of the process itself (``kill -9``, an abort in C++) cut a write short."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 less the process's umask, read
    from /proc where Linux shows it (setting the umask to read it would, for a moment, change it
    for every thread of the process)."""
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` (never a fixed name an existing link could
    redirect) to write to; when the block ends without an error it is flushed to disk and
    renamed over ``path``, otherwise removed; the file gets the mode a plain ``open`` would give it
    (0666 less the umask). A crash or a kill mid-write leaves the previous file
    intact and no partial one. The parent directory is created if needed. Any failure of its own
    file operations (a full disk, a read-only place, a refused permission, a directory in the way)
    is an :class:`OutputError` naming ``path``, and so is a full disk or a refused write in the
    block; any other error of the block propagates as it is."""
    path = Path(path)
    tmp: str | None = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(path)  # one writer per file: any temporary file beside it is stale
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.chmod(tmp, _new_file_mode())  # mkstemp's 0600 would hide the result from the group
            os.close(fd)
        except OSError as e:
            raise _cannot_write(path, e) from None
        yield Path(tmp)
        try:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise _cannot_write(path, e) from None
    except OSError as e:  # raised in the block: only the file system's "cannot write" answers are ours
        if isinstance(e, OutputError) or e.errno not in _WRITE_ERRNOS:
            raise
        raise _cannot_write(path, e) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _cannot_write(path: Path, error: OSError) -> OutputError:
    intact = "; the previous file is intact" if path.is_file() else ""
    return OutputError(error.errno, f"cannot write {path}: {error.strerror or error}{intact}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], object], *, binary: bool = True) -> Path:
    """Write ``path`` all or nothing (:func:`atomic_path`): ``write(f)`` fills the temporary file."""
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)
    return Path(path)


def writable_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a directory a file can be written in, created if needed: checked before any
    work, so that a read-only or misnamed output place is one :class:`~biasloss.errors.InputError`
    (a ``ValueError``) naming ``flag``, not an error after an epoch."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a file; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise InputError(f"{flag} {str(path)!r}: cannot write there ({e.strerror or e})") from None
    return path


def writable_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a file that can be written: not a directory, in a writable directory (created
    if needed); :class:`~biasloss.errors.InputError` naming ``flag`` otherwise."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a directory; give a file name")
    writable_dir(path.parent, flag=f"{flag} {str(path)!r}: its directory")
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a text."""
    return atomic_write(path, lambda f: f.write(text), binary=False)
