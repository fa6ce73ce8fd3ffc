"""biasloss: Bias Loss and SkipblockNet for compact image classifiers.

Abrahamyan, Ziatchin, Chen, Deligiannis, "Bias Loss for Mobile Neural Networks", ICCV 2021.

The loss works with any PyTorch classifier::

    criterion = biasloss.BiasLoss()
    features = model.forward_features(x)          # or biasloss.FeatureTap(model)
    loss = criterion(model.forward_head(features), target, features)

Importing the package registers the SkipblockNet family (and the CIFAR zoo) with timm.
"""

import biasloss.models.cifar  # noqa: F401  (registers the cifar_* zoo with timm)
from biasloss.features import FeatureTap, forward_with_features
from biasloss.losses import (
    LOSSES,
    BiasLoss,
    CrossEntropyLoss,
    FocalLoss,
    bias_loss,
    bias_weights,
    create_loss,
    feature_variance,
    focal_loss,
)

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "BiasLoss",
    "CrossEntropyLoss",
    "FeatureTap",
    "FocalLoss",
    "bias_loss",
    "bias_weights",
    "create_loss",
    "feature_variance",
    "focal_loss",
    "forward_with_features",
]
