"""Losses sharing one call signature, ``criterion(logits, target, features)``.

``create_loss("ce" | "focal" | "bias", **kwargs)`` picks one by name, so a trainer can switch
among the paper's three losses without knowing which it runs. :data:`LOSSES` is the one table of
them: the trainer's ``--loss`` choices, the options each takes and ``reproduce``'s losses come
from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from torch import nn

from biasloss.errors import InputError

from .bias import (BiasLoss, Scaling, bias_loss, bias_weights, check_clamp, clamp_option, feature_variance, rank_scale,
                   scale_variance, weight_function, weight_stats)
from .focal import CrossEntropyLoss, FocalLoss, focal_loss

__all__ = [
    "BiasLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LOSSES",
    "LossSpec",
    "bias_loss",
    "bias_weights",
    "check_clamp",
    "clamp_option",
    "create_loss",
    "feature_variance",
    "focal_loss",
    "needs_features",
    "rank_scale",
    "scale_variance",
    "weight_function",
    "weight_stats",
]


@dataclass(frozen=True)
class LossSpec:
    """A loss of :data:`LOSSES`: its module, and the options of ``biasloss train`` it takes (by
    their names there: ``--alpha`` is ``alpha``) with their defaults, in the command's form (the
    clamp as ``[low, high]`` or ``"none"``, see :func:`clamp_option`), what each means (the
    flag's help) and, where an option takes one of a few names, which."""

    cls: type[nn.Module]
    options: Mapping[str, Any] = field(default_factory=dict)
    help: Mapping[str, str] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


#: The losses by name: :func:`create_loss`'s names and ``biasloss train --loss``'s choices.
LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec(CrossEntropyLoss),
    "focal": LossSpec(FocalLoss, {"gamma": 2.0}, {"gamma": "focal loss gamma"}),
    "bias": LossSpec(
        BiasLoss, {"alpha": 0.3, "beta": 0.3, "scaling": "batch", "clamp": [0.5, 1.5]},
        {"alpha": "Bias Loss alpha", "beta": "Bias Loss beta",
         "scaling": "Bias Loss variance scaling (rank is ours, beyond the paper)",
         "clamp": "Bias Loss weight clamp"},
        {"scaling": get_args(Scaling)},
    ),
}


def create_loss(name: str, **kwargs) -> nn.Module:
    """Build a loss by name: ``"ce"``, ``"focal"`` or ``"bias"``.

    Every returned module is called as ``criterion(logits, target, features)``; only the
    Bias Loss reads ``features``. ``kwargs`` go to the loss's constructor.
    """
    try:
        spec = LOSSES[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}") from None
    return spec.cls(**kwargs)


def needs_features(criterion: nn.Module) -> bool:
    """Whether ``criterion`` reads the feature map (only the Bias Loss does)."""
    return isinstance(criterion, BiasLoss)
