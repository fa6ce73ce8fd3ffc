"""Bias Loss (Abrahamyan et al., "Bias Loss for Mobile Neural Networks", ICCV 2021, section 3).

Cross-entropy re-weighted per sample by the variance of that sample's last feature map:

1. ``v_i``: unbiased variance of sample i's flattened feature map (detached, float32);
2. ``s_i = (v_i - min_j v_j) / (max_j v_j - min_j v_j)``: min-max scaling over the batch
   (the authors' code scales the per-sample *variances*; we follow it);
3. ``z_i = exp(alpha * s_i) - beta``, clamped to ``[0.5, 1.5]`` (section 5) unless ``clamp=None``;
4. ``L = mean_i z_i * CE_i`` (eq. 4; a plain mean, not a weighted one).

When every variance in the batch is equal (a batch of one, identical samples) the scaled
variances are all 0 instead of the NaN of the authors' code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from biasloss.errors import InputError, InputTypeError

from ._validate import (
    check_label_smoothing,
    check_logits_target,
    check_reduction,
    cross_entropy,
    reduce,
)

__all__ = ["BiasLoss", "bias_loss", "bias_weights", "check_clamp", "clamp_option", "feature_variance", "rank_scale",
           "scale_variance", "weight_function", "weight_stats"]

Clamp = tuple[float, float] | None
DEFAULT_CLAMP = (0.5, 1.5)  # the weights' clamp in the authors' code
Scaling = Literal["batch", "running_min", "rank"]
_SCALINGS = get_args(Scaling)
#: The authors' initial value of the running minimum ("global" scaling).
RUNNING_MIN_INIT = 1e5


def feature_variance(features: Tensor) -> Tensor:
    """Per-sample unbiased variance of a feature map (the paper's eqs. 1-2).

    Args:
        features: ``(B, ...)`` with at least two values per sample, any dtype and memory
            format (channels-last needs no copy: the reduction runs over all non-batch dims).

    Returns:
        ``(B,)`` float32, detached.
    """
    _check_features(features)
    return _variance(features)


def _check_features(features: Tensor, logits: Tensor | None = None) -> None:
    """``features`` is a floating point ``(B, ...)`` tensor with two or more values per sample,
    with the batch size of ``logits`` when given."""
    if not isinstance(features, Tensor):
        raise InputTypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() < 2:
        raise InputError(
            f"features must have a batch dim and at least one feature dim, e.g. (B, C, H, W); "
            f"got shape {tuple(features.shape)}"
        )
    if logits is not None and features.shape[0] != logits.shape[0]:
        raise InputError(
            f"features and logits must have the same batch size; got features "
            f"{tuple(features.shape)} and logits {tuple(logits.shape)}"
        )
    if not features.is_floating_point():
        raise InputTypeError(f"features must be floating point, got {features.dtype}")
    if math.prod(features.shape[1:]) < 2:
        raise InputError(
            f"features need at least 2 values per sample for an unbiased variance; "
            f"got shape {tuple(features.shape)}"
        )


def _variance(features: Tensor) -> Tensor:
    features = features.detach()
    dims = tuple(range(1, features.dim()))
    # torch.compile fuses torch.var's reads itself, and the CPU shortcut's data-dependent fallback
    # would break its graph
    if features.dtype == torch.float64 or features.device.type != "cpu" or torch.compiler.is_compiling():
        return torch.var(features.float() if features.dtype != torch.float64 else features,
                         dim=dims, correction=1).float()
    return _cpu_variance(features.float(), dims, math.prod(features.shape[1:]))


# Rows whose mean^2 exceeds this multiple of their variance are recomputed with torch.var:
# there the float32 sum-of-squares formula would lose more than ~1e-5 of relative precision.
_CANCELLATION_LIMIT = 64.0


def _cpu_variance(features: Tensor, dims: tuple[int, ...], n: int) -> Tensor:
    """Unbiased variance from one sum and one norm (two fast vectorised reads; PyTorch's
    Welford ``torch.var`` is about 17x slower on the CPU), falling back to ``torch.var`` for the
    rows where the shortcut would cancel catastrophically (mean much larger than spread)."""
    total = features.sum(dims)
    sq = torch.linalg.vector_norm(features, dim=dims).square()
    mean = total / n
    var = ((sq - total * mean) / (n - 1)).clamp_min(0.0)
    unstable = mean.square() > _CANCELLATION_LIMIT * var
    if unstable.any():
        var[unstable] = torch.var(features[unstable], dim=dims, correction=1)
    return var


def _check_args(alpha: float, beta: float, clamp: Clamp) -> Clamp:
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputTypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise InputError(f"{name} must be finite, got {value}")
    return check_clamp(clamp)


def check_clamp(clamp: Clamp | list[float]) -> Clamp:
    """``clamp`` as ``None`` or a ``(low, high)`` float pair with ``low <= high``."""
    if clamp is None:
        return None
    if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
        raise InputTypeError(f"clamp must be None or a (low, high) pair, got {clamp!r}")
    low, high = float(clamp[0]), float(clamp[1])
    if math.isnan(low) or math.isnan(high) or low > high:
        raise InputError(f"clamp must be (low, high) with low <= high, got {clamp!r}")
    return low, high


def clamp_option(value: str | list[float] | None) -> Clamp:
    """The clamp a run's ``--clamp LOW HIGH`` / ``--no-clamp`` value stands for: ``"none"`` is no
    clamp, ``None`` (a run from before the option) the paper's (0.5, 1.5)."""
    if value == "none":
        return None
    return check_clamp(DEFAULT_CLAMP if value is None else value)


def _resolve_sync(sync: bool | Literal["auto"]) -> bool:
    if sync == "auto":
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not isinstance(sync, bool):
        raise InputTypeError(f"sync must be True, False or 'auto', got {sync!r}")
    if sync and not (dist.is_available() and dist.is_initialized()):
        raise InputError("sync=True needs an initialised torch.distributed process group")
    return sync


def _check_not_empty(variance_or_features: Tensor) -> None:
    if variance_or_features.shape[0] == 0:
        raise InputError("features hold an empty batch: the Bias Loss needs at least one sample")


def _batch_extrema(variance: Tensor, sync: bool, process_group) -> tuple[Tensor, Tensor]:
    """Min and max of the (non-empty) variances, over all ranks when ``sync`` (one all-reduce)."""
    extrema = torch.stack((-variance.min(), variance.max()))
    if sync:
        dist.all_reduce(extrema, op=dist.ReduceOp.MAX, group=process_group)
    return -extrema[0], extrema[1]


def _min_max_scale(variance: Tensor, low: Tensor, high: Tensor, minimum: Tensor) -> Tensor:
    span = high - low
    # max == min: every sample is alike; scaled variance 0 instead of the authors' 0/0.
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (variance - minimum) / safe_span, torch.zeros_like(variance))


def scale_variance(variance: Tensor, *, sync: bool | Literal["auto"] = False, process_group=None) -> Tensor:
    """Min-max scale per-sample variances to [0, 1] over the batch (the paper's eq. 3).

    Args:
        variance: ``(B,)`` per-sample variances, ``B >= 1``.
        sync: take the batch min/max over all ranks of ``process_group`` (one all-reduce),
            so the result equals that of one process holding the global batch.

    Returns:
        ``(B,)`` scaled variances; all zeros when ``max == min``.
    """
    sync = _resolve_sync(sync)
    _check_not_empty(variance)
    low, high = _batch_extrema(variance, sync, process_group)
    return _min_max_scale(variance, low, high, low)


def rank_scale(variance: Tensor, *, sync: bool | Literal["auto"] = False, process_group=None) -> Tensor:
    """Each variance's rank within the batch, mapped to [0, 1] (``scaling="rank"``; ours, beyond
    the paper).

    ``s_i = (#{j: v_j < v_i} + (#{j: v_j = v_i} - 1) / 2) / (N - 1)``: the lowest variance gets 0,
    the highest 1, ties their mean rank, so ``z`` spans ``[z(0), z(1)]`` whatever the outliers. With
    ``sync`` the ranks are over the global batch of all ranks of ``process_group`` (one all-gather
    of the per-sample variances, after an all-reduce of the batch sizes, which may differ).

    Args:
        variance: ``(B,)`` per-sample variances, ``B >= 1``.

    Returns:
        ``(B,)`` in [0, 1]; all zeros for a (global) batch of one.
    """
    sync = _resolve_sync(sync)
    _check_not_empty(variance)
    return _rank_scale(variance, sync, process_group)


def _rank_scale(variance: Tensor, sync: bool, process_group) -> Tensor:
    pool = _gather_variances(variance, process_group) if sync else variance
    less = (pool.unsqueeze(0) < variance.unsqueeze(1)).sum(1)  # NaN padding compares False
    equal = (pool.unsqueeze(0) == variance.unsqueeze(1)).sum(1)
    n = (~pool.isnan()).sum()
    rank = less.to(variance.dtype) + (equal - 1).to(variance.dtype) / 2
    return torch.where(n > 1, rank / (n - 1).clamp_min(1).to(variance.dtype), torch.zeros_like(variance))


def _gather_variances(variance: Tensor, process_group) -> Tensor:
    """Every rank's variances, padded with NaN to the largest batch (``(world * B_max,)``)."""
    size = torch.tensor([variance.numel()], device=variance.device)
    dist.all_reduce(size, op=dist.ReduceOp.MAX, group=process_group)
    padded = torch.full((int(size.item()),), float("nan"), device=variance.device, dtype=variance.dtype)
    padded[: variance.numel()] = variance
    world = dist.get_world_size(process_group)
    gathered = torch.empty(world * padded.numel(), device=variance.device, dtype=variance.dtype)
    dist.all_gather_into_tensor(gathered, padded, group=process_group)
    return gathered


def weight_function(scaled: Tensor, alpha: float, beta: float, clamp: Clamp) -> Tensor:
    """z(v) = exp(alpha v) - beta (eq. 3) of scaled variances ``v``, clamped to ``clamp`` if given."""
    weights = torch.exp(alpha * scaled) - beta  # eq. 3
    if clamp is not None:
        weights = weights.clamp(clamp[0], clamp[1])
    return weights


def bias_weights(
    features: Tensor,
    *,
    alpha: float = 0.3,
    beta: float = 0.3,
    clamp: Clamp = DEFAULT_CLAMP,
    sync: bool = False,
    process_group=None,
) -> Tensor:
    """Per-sample Bias Loss weights ``z(v)`` (eq. 3) with batch scaling, for logging and analysis.

    Returns ``(B,)`` float32, detached.
    """
    clamp = _check_args(alpha, beta, clamp)
    _check_features(features)
    _check_not_empty(features)
    return _batch_weights(features, alpha, beta, clamp, _resolve_sync(sync), process_group)


def _batch_weights(features: Tensor, alpha: float, beta: float, clamp: Clamp, sync: bool, process_group) -> Tensor:
    variance = _variance(features)
    low, high = _batch_extrema(variance, sync, process_group)
    return weight_function(_min_max_scale(variance, low, high, low), alpha, beta, clamp)


#: A weight counts as at its batch's lowest when within this of it (:func:`weight_stats`).
NEAR_MIN = 0.01
#: The percentiles of the weights that :func:`weight_stats` reports.
WEIGHT_PERCENTILES = (1, 10, 50, 90, 99)


def weight_stats(weights: Tensor, near_min: Tensor | None = None, clamp: Clamp = None) -> dict[str, float]:
    """What the trainer logs per epoch of the Bias Loss weights ``z`` it trained with, as flat
    ``metrics.jsonl`` keys: ``z_mean``, ``z_std`` (population), the percentiles ``z_p01`` ...
    ``z_p99`` (:data:`WEIGHT_PERCENTILES`, linear interpolation), ``z_near_min`` (the fraction
    within :data:`NEAR_MIN` of their batch's lowest weight, when ``near_min`` marks them) and,
    with a ``clamp``, ``z_at_low`` and ``z_at_high`` (the fractions at each bound)."""
    w = weights.detach().double().flatten()
    q = torch.quantile(w, torch.tensor([p / 100 for p in WEIGHT_PERCENTILES], dtype=w.dtype, device=w.device))
    stats = {"z_mean": w.mean().item(), "z_std": w.std(correction=0).item(),
             **{f"z_p{p:02d}": v for p, v in zip(WEIGHT_PERCENTILES, q.tolist())}}
    if near_min is not None:
        stats["z_near_min"] = near_min.double().mean().item()
    if clamp is not None:
        stats["z_at_low"] = (w <= clamp[0]).double().mean().item()
        stats["z_at_high"] = (w >= clamp[1]).double().mean().item()
    return {key: round(value, 6) for key, value in stats.items()}


def _weighted_loss(logits: Tensor, target: Tensor, weights: Tensor, reduction: str, label_smoothing: float) -> Tensor:
    ce = cross_entropy(logits, target, "none", label_smoothing)
    return reduce(weights * ce, reduction)  # eq. 4


def bias_loss(
    logits: Tensor,
    target: Tensor,
    features: Tensor,
    *,
    alpha: float = 0.3,
    beta: float = 0.3,
    clamp: Clamp = DEFAULT_CLAMP,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    sync: bool | Literal["auto"] = "auto",
    process_group=None,
) -> Tensor:
    """Bias Loss with per-batch min-max scaling (the paper's eqs. 1-5); stateless.

    Args:
        logits: ``(B, K)`` class scores.
        target: ``(B,)`` class indices or ``(B, K)`` class probabilities (mixup, cutmix).
        features: ``(B, C, H, W)`` (or any ``(B, ...)``) output of the last convolutional
            layer before global pooling; no gradient flows through the weights.
        alpha, beta: ``z(v) = exp(alpha * v) - beta`` (eq. 3).
        clamp: ``(low, high)`` bounds on ``z`` (section 5); ``None`` is the authors' code.
        reduction: ``"mean"`` (eq. 4), ``"sum"`` or ``"none"``.
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
        sync: scale over the global batch of all ranks (``torch.distributed``); ``"auto"`` (as
            :class:`BiasLoss`): when a process group of more than one rank is initialised.

    Returns:
        float32 scalar, or ``(B,)`` with ``reduction="none"``.
    """
    check_logits_target(logits, target)
    reduction = check_reduction(reduction)
    label_smoothing = check_label_smoothing(label_smoothing)
    clamp = _check_args(alpha, beta, clamp)
    _check_features(features, logits)
    weights = _batch_weights(features, alpha, beta, clamp, _resolve_sync(sync), process_group)
    return _weighted_loss(logits, target, weights, reduction, label_smoothing)


class BiasLoss(nn.Module):
    """Bias Loss as a module: ``criterion(logits, target, features)``.

    Args:
        alpha, beta, clamp, reduction, label_smoothing: see :func:`bias_loss`.
        scaling: ``"batch"`` (the paper: min-max over the batch) or ``"running_min"`` (the
            authors' code's "global" mode: the numerator subtracts the smallest variance seen
            so far, kept in the ``running_min`` buffer, so it is saved with the state dict; the
            denominator stays the batch's ``max - min``). The buffer is updated only in training
            mode. ``"rank"`` (ours, beyond the paper): each sample's rank of variance within the
            batch, mapped to [0, 1] (:func:`rank_scale`), so the weights spread over
            ``[exp(0) - beta, exp(alpha) - beta]`` however the variances are distributed.
        sync: reduce min/max (and the running minimum) across ranks; ``"auto"`` does so when a
            ``torch.distributed`` process group with more than one rank is initialised. Only in
            training mode, where every rank runs the same steps: in eval mode each rank scales
            its own batch, because evaluation shards may differ by a batch between ranks and a
            collective on one rank alone would wait for ever.
        process_group: the group to reduce over (default: the world).

    After each call, ``last_weights`` holds the detached ``(B,)`` weights, for logging. In
    training mode with ``record_weights = True`` (the trainer sets it) each batch's weights are
    also kept, on their device and without synchronising, until :meth:`pop_weight_stats`
    summarises them: the trainer logs one summary per epoch.
    """

    running_min: Tensor

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.3,
        clamp: Clamp = DEFAULT_CLAMP,
        scaling: Scaling = "batch",
        *,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        sync: bool | Literal["auto"] = "auto",
        process_group=None,
    ) -> None:
        super().__init__()
        self.clamp = _check_args(alpha, beta, clamp)
        if scaling not in _SCALINGS:
            raise InputError(f"scaling must be one of {_SCALINGS}, got {scaling!r}")
        if sync != "auto" and not isinstance(sync, bool):
            raise InputTypeError(f"sync must be True, False or 'auto', got {sync!r}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.scaling = scaling
        self.reduction = check_reduction(reduction)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.sync = sync
        self.process_group = process_group
        self.register_buffer("running_min", torch.tensor(RUNNING_MIN_INIT, dtype=torch.float32))
        self.last_weights: Tensor | None = None
        self.record_weights = False
        self._seen: list[Tensor] = []  # per training batch: its weights, and which are near its lowest

    def weights(self, features: Tensor) -> Tensor:
        """The ``(B,)`` weights ``z(v)`` for ``features``; in training mode with
        ``scaling="running_min"`` this also updates the running minimum, as a forward does."""
        _check_features(features)
        _check_not_empty(features)
        return self._weights(features)

    def _weights(self, features: Tensor) -> Tensor:
        variance = _variance(features)
        sync = _resolve_sync(self.sync) and self.training  # evaluation batches are not in lockstep
        if self.scaling == "rank":
            scaled = _rank_scale(variance, sync, self.process_group)
        else:
            low, high = _batch_extrema(variance, sync, self.process_group)
            minimum = low
            if self.scaling == "running_min":
                minimum = torch.minimum(self.running_min.to(low.device), low)
                if self.training:
                    self.running_min.copy_(minimum)
            scaled = _min_max_scale(variance, low, high, minimum)
        weights = weight_function(scaled, self.alpha, self.beta, self.clamp)
        self.last_weights = weights
        if self.training and self.record_weights:
            near_min = weights <= weights.min() + NEAR_MIN
            self._seen.append(torch.stack((weights, near_min.to(weights.dtype))))
        return weights

    def pop_weight_stats(self, gather: Callable[[Tensor], Tensor] | None = None) -> dict[str, float] | None:
        """Statistics of the weights of every training batch since the last call, then forgets
        them (``None`` if there was none): :func:`weight_stats`. ``gather`` joins the ranks'
        ``(2, n)`` records (weights; near their batch's lowest) along dim 1, for the global
        statistics under torchrun (every rank calls it); without it, this rank's weights."""
        seen = torch.cat(self._seen, dim=1) if self._seen else torch.zeros(2, 0)
        self._seen = []
        if gather is not None:
            seen = gather(seen)
        if seen.shape[1] == 0:
            return None
        return weight_stats(seen[0], seen[1].bool(), self.clamp)

    def forward(self, logits: Tensor, target: Tensor, features: Tensor) -> Tensor:
        check_logits_target(logits, target)
        _check_features(features, logits)
        weights = self._weights(features)
        return _weighted_loss(logits, target, weights, self.reduction, self.label_smoothing)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, clamp={self.clamp}, scaling={self.scaling!r}, "
            f"reduction={self.reduction!r}, sync={self.sync!r}"
        )
