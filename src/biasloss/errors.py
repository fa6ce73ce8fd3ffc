"""The errors biasloss raises for what its user can get wrong: one hierarchy, under :class:`BiaslossError`.

A :class:`BiaslossError` is a message for the user, never a bug: the command line prints it as
one line, ``biasloss: error: <message>``, and exits with the error's :attr:`~BiaslossError.exit_code`
(2 for bad input, a missing data set or package and an output that cannot be written, 1 for a
non-finite training loss, 128 + the signal's number for an interrupted training: 130 for Ctrl-C,
143 for SIGTERM). Any other exception is a bug, in biasloss or below it, and keeps its traceback.

Each class also derives from the built-in exception an API user would catch, so that code
catching ``ValueError``, ``TypeError``, ``FileNotFoundError``, ``ImportError``, ``OSError`` or
``RuntimeError`` keeps working::

    BiaslossError
    ├── InputError (ValueError)                      a bad flag value, argument or input file
    │   ├── InputTypeError (TypeError)               an argument of the wrong type
    │   ├── InputFileNotFoundError (FileNotFoundError)  an input file that is not there
    │   ├── CheckpointError                          a checkpoint missing, unreadable or incompatible
    │   └── DatasetCorruptError (DatasetError)       data files that do not hold what their format says
    ├── DatasetError
    │   └── DatasetNotFoundError (FileNotFoundError) a data set that is not where it was looked for
    ├── MissingDependencyError (ImportError)         an optional package is not installed
    ├── OutputError (OSError)                        an output that cannot be written
    ├── NonFiniteLossError (RuntimeError)            the training loss became NaN or infinite
    └── TrainingInterrupted                          Ctrl-C / SIGTERM stopped training, last.pt written

Narrower classes live beside the code that raises them: ``biasloss._io.TorchFileError`` (an
InputError), ``biasloss.train.checkpoint.ForeignCheckpointError`` (a CheckpointError),
``biasloss.export.Int8AccuracyError`` (a BiaslossError and ValueError). ``MissingRuntimeError``
(:mod:`biasloss.deploy`) is an old name of :class:`MissingDependencyError`.

This module imports nothing heavy (no torch): ``import biasloss.errors`` is cheap.
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["BiaslossError", "CheckpointError", "DatasetCorruptError", "DatasetError", "DatasetNotFoundError",
           "InputError", "InputFileNotFoundError", "InputTypeError", "MissingDependencyError", "NonFiniteLossError",
           "OutputError", "TrainingInterrupted"]


class BiaslossError(Exception):
    """What the user can mend: the command line shows the message in one line, no traceback,
    and exits with :attr:`exit_code`."""

    #: The command line's exit status for this error.
    exit_code: int = 2


class InputError(BiaslossError, ValueError):
    """A bad value given by the user: a flag, an argument of a public function, a file's contents.
    The message names the flag or argument at fault."""


class InputTypeError(InputError, TypeError):
    """An argument of a public function of the wrong type (where the API documents ``TypeError``)."""


class InputFileNotFoundError(InputError, FileNotFoundError):
    """A file or directory given by the user (a flag, an argument) that does not exist."""

    def __init__(self, message: str, filename: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.errno = errno.ENOENT
        self.strerror = message
        self.filename = None if filename is None else os.fspath(filename)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CheckpointError(InputError):
    """A checkpoint that is missing, unreadable, not a biasloss checkpoint, or does not fit the
    command (another model, dataset or option than the run it would continue)."""


class DatasetError(BiaslossError):
    """A data set that cannot be used as it is on disk."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A data set that is not where it was looked for (and could not be downloaded); the message
    says where it looked and how to get it."""


class DatasetCorruptError(DatasetError, InputError):
    """Data files that exist but do not hold what their format says (truncated, wrong shape,
    unreadable image); the message names the file."""


class MissingDependencyError(BiaslossError, ImportError):
    """An optional package is not installed; the message says which extra installs it."""


class OutputError(BiaslossError, OSError):
    """An output file could not be written (full disk, read-only place, no permission); the
    previous file, if any, is intact. The message names the file."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class NonFiniteLossError(BiaslossError, RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept as it was."""

    exit_code = 1


class TrainingInterrupted(BiaslossError):
    """Ctrl-C (SIGINT) or SIGTERM stopped a training after it wrote ``checkpoint`` (``last.pt``),
    from which ``--resume`` continues exactly. ``signum`` is the signal that arrived (``None``
    when another rank of a distributed run received it); the exit status is 128 + ``signum``:
    130 for Ctrl-C, 143 for SIGTERM."""

    def __init__(self, message: str, *, signum: int | None = None,
                 checkpoint: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.signum = signum
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + (self.signum if self.signum is not None else int(signal.SIGINT))
