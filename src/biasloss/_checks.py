"""Checks of user input shared by the commands: each names the flag at fault in one line."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from biasloss.errors import InputError

__all__ = ["is_out_of_memory", "one_line", "positive", "positive_flags", "try_input"]

N = TypeVar("N", bound=float | None)


def positive(name: str, value: N, *, kind: type[int] | type[float] | None = None) -> N:
    """``value`` when it is ``None`` or above zero, else :class:`~biasloss.errors.InputError`:
    ``"<name> must be positive, got <value>"`` (``name`` as given: ``"--epochs"`` for a flag, ``"count"`` for an
    argument). ``kind=int`` also refuses what is not an int ("must be a positive int"), ``kind=float`` what is not
    finite ("must be a positive number")."""
    if value is None:
        return value
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputError(f"{name} must be a positive int, got {value!r}")
    if kind is float and not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive number, got {value}")
    if not value > 0:
        raise InputError(f"{name} must be positive, got {value}")
    return value


def positive_flags(values: Mapping[str, Any], names: Iterable[str]) -> None:
    """:func:`positive` for each of the options ``names`` (``batch_size``, ...) in ``values``
    (``vars(args)``, a config), named by their flag (``--batch-size``); missing ones are unset."""
    for name in names:
        positive(f"--{name.replace('_', '-')}", values.get(name))


def one_line(error: BaseException) -> str:
    """The error's first line; for one raised in a DataLoader worker (re-raised with the worker's
    traceback as its message) the original message, the traceback's last line."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].startswith("Caught ") and len(lines) > 1 and "Original Traceback" in str(error):
        return lines[-1].split(": ", 1)[-1]  # "DatasetCorruptError: <message>"
    return lines[0]


def is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation, on CUDA (``torch.OutOfMemoryError``) or on the CPU."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text))


@torch.no_grad()
def try_input(model: nn.Module, x: torch.Tensor | tuple[int, ...], flag: str, working_size: int) -> torch.Tensor:
    """``model(x)`` (``x`` a tensor, or a shape for zeros), where a failure caused by the input
    is an :class:`~biasloss.errors.InputError` naming ``flag``.

    The input is to blame when the model runs at ``working_size`` (a size it is built for) but
    not at ``x``'s, or when memory runs out; any other failure is a real error and propagates."""
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(x)
    try:
        if not isinstance(x, torch.Tensor):
            x = torch.zeros(shape)
        return model(x)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if is_out_of_memory(e):
            raise InputError(f"{flag}: a {shape} input does not fit in memory ({first})") from None
        try:
            model(torch.zeros((1, shape[1], working_size, working_size)))
        except RuntimeError:
            raise e from None
        raise InputError(f"{flag}: {type(model).__name__} cannot take a {shape[-2]} x {shape[-1]} input "
                         f"({first})") from None
