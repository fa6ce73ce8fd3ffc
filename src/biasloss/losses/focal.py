"""Softmax focal loss and a cross-entropy module with the shared loss call signature.

Paper: `Focal Loss for Dense Object Detection`
    - Tsung-Yi Lin, Priya Goyal, Ross Girshick, Kaiming He, Piotr Dollar
    - ICCV 2017, https://arxiv.org/abs/1708.02002

The Bias Loss paper (Abrahamyan et al., ICCV 2021) compares against cross-entropy and the
multi-class (softmax) focal loss, gamma = 2 unless stated. For one sample with target
distribution ``q`` over ``K`` classes and ``p = softmax(logits)``::

    FL = -sum_k alpha_k * q_k * (1 - p_k) ** gamma * log(p_k)

With class indices ``q`` is one-hot and this is the paper's ``-alpha_t (1 - p_t) ** gamma log p_t``;
``(B, K)`` probabilities (mixup, cutmix) are used as given. ``gamma = 0`` without ``alpha`` is
exactly :func:`torch.nn.functional.cross_entropy`, label smoothing included.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from biasloss.errors import InputError, InputTypeError

from ._validate import (
    check_label_smoothing,
    check_logits_target,
    check_reduction,
    compute_dtype,
    cross_entropy,
    reduce,
)

__all__ = ["CrossEntropyLoss", "FocalLoss", "focal_loss"]


def _check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise InputTypeError(f"gamma must be a non-negative float, got {gamma!r}")
    if not gamma >= 0.0:  # also rejects NaN
        raise InputError(f"gamma must be >= 0, got {gamma}")
    return float(gamma)


def _check_alpha(
    alpha: Union[float, Tensor, None], num_classes: Optional[int] = None
) -> Union[float, Tensor, None]:
    if alpha is None:
        return None
    if isinstance(alpha, Tensor):
        if alpha.dim() == 0:
            return float(alpha)
        if alpha.dim() != 1:
            raise InputError(
                f"alpha must be a scalar or a (K,) tensor of class weights, "
                f"got shape {tuple(alpha.shape)}"
            )
        if alpha.is_complex() or alpha.dtype == torch.bool:
            raise InputTypeError(f"alpha must hold real class weights, got {alpha.dtype}")
        if num_classes is not None and alpha.shape[0] != num_classes:
            raise InputError(
                f"alpha must have one weight per class: got {alpha.shape[0]} weights "
                f"for {num_classes} classes"
            )
        return alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise InputTypeError(
            f"alpha must be None, a float or a (K,) tensor of class weights, "
            f"got {type(alpha).__name__}"
        )
    return float(alpha)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: Union[float, Tensor, None] = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Multi-class softmax focal loss (Lin et al., 2017).

    Args:
        logits: ``(B, K)`` class scores, any floating dtype; computed in float32 (float64 stays
            float64), through ``log_softmax``, so extreme logits give finite values.
        target: ``(B,)`` integer class indices, or ``(B, K)`` class probabilities.
        gamma: focusing parameter, ``>= 0``; ``0`` is cross-entropy.
        alpha: class weights: a scalar (multiplies the loss) or a ``(K,)`` tensor (``alpha_k``
            weights the terms of class ``k``); ``None`` for no weighting.
        reduction: ``"mean"`` (plain mean over the batch, also with ``alpha``: unlike
            ``F.cross_entropy(weight=...)`` it does not divide by the sum of the weights),
            ``"sum"``, or ``"none"`` for the ``(B,)`` per-sample losses.
        label_smoothing: in ``[0, 1]``, as in :func:`torch.nn.functional.cross_entropy`: the
            target distribution (one-hot or given probabilities) becomes
            ``q * (1 - label_smoothing) + label_smoothing / K``.

    Returns:
        A float32 scalar (float64 for float64 logits), or ``(B,)`` with ``reduction="none"``.
    """
    check_logits_target(logits, target)
    gamma = _check_gamma(gamma)
    alpha = _check_alpha(alpha, logits.shape[1])
    reduction = check_reduction(reduction)
    label_smoothing = check_label_smoothing(label_smoothing)

    if gamma == 0.0 and alpha is None:
        return cross_entropy(logits, target, reduction, label_smoothing)  # bit for bit

    dtype = compute_dtype(logits)
    log_p = F.log_softmax(logits.to(dtype), dim=1)
    num_classes = log_p.shape[1]
    if target.dim() == 1:
        q = torch.zeros_like(log_p).scatter_(1, target.long().unsqueeze(1), 1.0)
    else:
        q = target.to(dtype)
    if label_smoothing > 0.0:
        q = q * (1.0 - label_smoothing) + label_smoothing / num_classes

    # Classes with q_k == 0 contribute nothing, even where log p_k is -inf (a -inf logit): mask
    # log p before the product so that neither the value nor the gradient sees 0 * inf.
    terms = -q * torch.where(q != 0, log_p, torch.zeros_like(log_p))
    if gamma != 0.0:
        # 1 - p, accurate near p = 1 (expm1). The pow is guarded at 0: where 1 - p == 0 the factor
        # is 0 and its gradient is 0, instead of 0 * inf = NaN for gamma < 1.
        one_minus_p = -torch.expm1(log_p)
        positive = one_minus_p > 0
        base = torch.where(positive, one_minus_p, torch.ones_like(one_minus_p))
        modulator = torch.where(positive, base.pow(gamma), torch.zeros_like(one_minus_p))
        terms = terms * modulator
    if isinstance(alpha, Tensor):
        terms = terms * alpha.to(device=terms.device, dtype=dtype)
    loss = terms.sum(dim=1)
    if isinstance(alpha, float):
        loss = loss * alpha
    return reduce(loss, reduction)


class FocalLoss(nn.Module):
    """Softmax focal loss as a module, called as ``criterion(logits, target, features=None)``.

    Args:
        gamma, alpha, reduction, label_smoothing: see :func:`focal_loss`. A ``(K,)`` tensor
            ``alpha`` is kept as a non-persistent buffer: it follows ``.to(device)`` and stays
            out of the state dict.

    ``features`` is accepted and ignored, so that every loss of this package shares one call
    signature.
    """

    alpha_weight: Optional[Tensor]

    def __init__(self, gamma: float = 2.0, alpha: Union[float, Tensor, None] = None, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = _check_gamma(gamma)
        alpha = _check_alpha(alpha)
        self.reduction = check_reduction(reduction)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        weight = alpha.detach().clone().float() if isinstance(alpha, Tensor) else None
        self.register_buffer("alpha_weight", weight, persistent=False)
        self.alpha_scalar: Optional[float] = None if isinstance(alpha, Tensor) else alpha

    @property
    def alpha(self) -> Union[float, Tensor, None]:
        return self.alpha_weight if self.alpha_weight is not None else self.alpha_scalar

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        return focal_loss(logits, target, gamma=self.gamma, alpha=self.alpha, reduction=self.reduction,
                          label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        alpha = self.alpha
        alpha = f"tensor of {alpha.numel()}" if isinstance(alpha, Tensor) else alpha
        return (f"gamma={self.gamma}, alpha={alpha}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}")


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy, called as ``criterion(logits, target, features=None)``.

    A thin wrapper over :func:`torch.nn.functional.cross_entropy`: class indices ``(B,)`` or
    probabilities ``(B, K)``, logits cast to float32 (float64 stays float64), ``label_smoothing``
    with PyTorch's semantics, ``reduction`` in ``("mean", "sum", "none")``. ``features`` is
    accepted and ignored, so that every loss of this package shares one call signature.
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.label_smoothing = check_label_smoothing(label_smoothing)

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        check_logits_target(logits, target)
        return cross_entropy(logits, target, self.reduction, self.label_smoothing)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"
