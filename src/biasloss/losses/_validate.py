"""Argument checks and helpers shared by the classification losses (cross-entropy, focal, bias).

Bad input raises ``TypeError`` (wrong kind of tensor) or ``ValueError`` (wrong shape or value)
with a message that says what was expected, instead of broadcasting silently or returning NaN.
The checks look at shapes and dtypes only: they never read tensor values, so they never force a
host-device synchronisation.

The public losses run the ``check_*`` functions once, on entry; :func:`cross_entropy` and
:func:`reduce` are the computations they share and trust their arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from biasloss.errors import InputError, InputTypeError

__all__ = [
    "REDUCTIONS",
    "check_label_smoothing",
    "check_logits_target",
    "check_reduction",
    "compute_dtype",
    "cross_entropy",
    "reduce",
]

REDUCTIONS = ("mean", "sum", "none")


def check_logits_target(logits: Tensor, target: Tensor) -> None:
    """Check that ``logits`` is ``(B, K)`` floating point and ``target`` is ``(B,)`` integer class
    indices or ``(B, K)`` floating point probabilities.

    Raises:
        TypeError: an argument is not a tensor, ``logits`` is not floating point, class indices are
            not integers, or probabilities are not floating point.
        ValueError: wrong number of dimensions, an empty batch or class dim, or a batch size or
            number of classes that differs between ``logits`` and ``target``.
    """
    if not isinstance(logits, Tensor):
        raise InputTypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(target, Tensor):
        raise InputTypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if logits.dim() != 2:
        raise InputError(
            f"logits must be 2-D (batch, classes), got shape {tuple(logits.shape)}; "
            f"flatten any extra dims before the loss"
        )
    if not logits.is_floating_point():
        raise InputTypeError(f"logits must be floating point, got {logits.dtype}")
    batch, classes = logits.shape
    if batch == 0:
        raise InputError(f"logits hold an empty batch, shape {tuple(logits.shape)}")
    if classes == 0:
        raise InputError(f"logits have no classes, shape {tuple(logits.shape)}")
    if target.dim() not in (1, 2):
        raise InputError(
            f"target must be (B,) class indices or (B, K) class probabilities, "
            f"got shape {tuple(target.shape)}"
        )
    if target.shape[0] != batch:
        raise InputError(
            f"target and logits must have the same batch size; got target {tuple(target.shape)} "
            f"and logits {tuple(logits.shape)}"
        )
    if target.dim() == 1:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise InputTypeError(
                f"(B,) target must hold integer class indices (e.g. torch.long), got {target.dtype}; "
                f"pass probabilities as a (B, K) tensor"
            )
    else:
        if not target.is_floating_point():
            raise InputTypeError(
                f"(B, K) target must hold floating point class probabilities, got {target.dtype}; "
                f"pass class indices as a (B,) tensor"
            )
        if target.shape[1] != classes:
            raise InputError(
                f"target probabilities must have one column per class; got target "
                f"{tuple(target.shape)} and logits {tuple(logits.shape)}"
            )


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of ``"mean"``, ``"sum"``, ``"none"``; else ``ValueError``."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise InputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_label_smoothing(label_smoothing: float) -> float:
    """Return ``label_smoothing`` as a float if it lies in ``[0, 1]``; else ``ValueError``."""
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
        raise InputTypeError(f"label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:  # also rejects NaN
        raise InputError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return float(label_smoothing)


def reduce(loss: Tensor, reduction: str) -> Tensor:
    """Reduce per-sample losses ``(B,)`` by a checked ``reduction``: ``"mean"`` (plain mean),
    ``"sum"`` or ``"none"``."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def compute_dtype(logits: Tensor) -> torch.dtype:
    """The dtype the losses compute in: float32, or float64 for float64 logits."""
    return torch.promote_types(logits.dtype, torch.float32)


def cross_entropy(logits: Tensor, target: Tensor, reduction: str = "none", label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy of checked arguments, computed in :func:`compute_dtype`.

    :func:`torch.nn.functional.cross_entropy` on the cast logits (and probabilities), so class
    indices, probabilities and label smoothing follow it: with probabilities ``q``, the loss is
    ``-(q' * log_softmax(logits)).sum(1)`` with ``q' = q * (1 - label_smoothing) + label_smoothing / K``.
    ``reduction="none"`` gives the ``(B,)`` per-sample losses.
    """
    dtype = compute_dtype(logits)
    if target.dim() == 2:
        target = target.to(dtype)
    return F.cross_entropy(logits.to(dtype), target, reduction=reduction, label_smoothing=label_smoothing)
