"""Checks of user input shared by the commands: each names the flag at fault in one line."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["is_out_of_memory", "one_line", "try_input"]


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
    is a ``ValueError`` naming ``flag``.

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
            raise ValueError(f"{flag}: a {shape} input does not fit in memory ({first})") from None
        try:
            model(torch.zeros((1, shape[1], working_size, working_size)))
        except RuntimeError:
            raise e from None
        raise ValueError(f"{flag}: {type(model).__name__} cannot take a {shape[-2]} x {shape[-1]} input "
                         f"({first})") from None
