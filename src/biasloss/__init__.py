"""biasloss: Bias Loss and SkipblockNet for compact image classifiers.

Abrahamyan, Ziatchin, Chen, Deligiannis, "Bias Loss for Mobile Neural Networks", ICCV 2021.

The loss works with any PyTorch classifier::

    criterion = biasloss.BiasLoss()
    features = model.forward_features(x)          # or biasloss.FeatureTap(model)
    loss = criterion(model.forward_head(features), target, features)

Importing the package registers the SkipblockNet family (and the CIFAR zoo) with timm, so that
``timm.create_model("skipblocknet_m")`` works after it; it stays light (no torch, no timm): the
models join timm's registry when timm is imported (:mod:`biasloss._timm_hook`), and the names
below are imported on first use. What a user can get wrong raises a :class:`BiaslossError`
(:mod:`biasloss.errors`); anything else is a bug.
"""

from typing import TYPE_CHECKING

from biasloss import _timm_hook, errors
from biasloss.errors import *  # noqa: F403 - every error class of errors.__all__

if TYPE_CHECKING:
    from biasloss.features import FeatureTap, forward_with_features
    from biasloss.losses import (LOSSES, BiasLoss, CrossEntropyLoss, FocalLoss, bias_loss, bias_weights, create_loss,
                                 feature_variance, focal_loss)

__version__ = "0.1.0"

#: the names imported on first use (they need torch): name -> the module that defines it
_LAZY = {
    **dict.fromkeys(("FeatureTap", "forward_with_features"), "biasloss.features"),
    **dict.fromkeys(("LOSSES", "BiasLoss", "CrossEntropyLoss", "FocalLoss", "bias_loss", "bias_weights",
                     "create_loss", "feature_variance", "focal_loss"), "biasloss.losses"),
}
#: the subpackages and modules reachable as attributes, ``biasloss.models`` ..., imported on first use
_SUBMODULES = ("analysis", "cli", "data", "deploy", "detection", "errors", "export", "features", "losses", "models",
               "train")


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})


_timm_hook.install()

__all__ = sorted([*_LAZY, *errors.__all__])
