"""Losses sharing one call signature, ``criterion(logits, target, features)``.

``create_loss("ce" | "focal" | "bias", **kwargs)`` picks one by name, so a trainer can switch
among the paper's three losses without knowing which it runs.
"""

from __future__ import annotations

from torch import nn

from .bias import (BiasLoss, bias_loss, bias_weights, check_clamp, clamp_option, feature_variance, scale_variance,
                   weight_function)
from .focal import CrossEntropyLoss, FocalLoss, focal_loss

__all__ = [
    "BiasLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LOSSES",
    "bias_loss",
    "bias_weights",
    "check_clamp",
    "clamp_option",
    "create_loss",
    "feature_variance",
    "focal_loss",
    "needs_features",
    "scale_variance",
    "weight_function",
]

#: Loss names accepted by :func:`create_loss` (and the CLI's ``--loss``).
LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropyLoss,
    "focal": FocalLoss,
    "bias": BiasLoss,
}


def create_loss(name: str, **kwargs) -> nn.Module:
    """Build a loss by name: ``"ce"``, ``"focal"`` or ``"bias"``.

    Every returned module is called as ``criterion(logits, target, features)``; only the
    Bias Loss reads ``features``. ``kwargs`` go to the loss's constructor.
    """
    try:
        cls = LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}") from None
    return cls(**kwargs)


def needs_features(criterion: nn.Module) -> bool:
    """Whether ``criterion`` reads the feature map (only the Bias Loss does)."""
    return isinstance(criterion, BiasLoss)
