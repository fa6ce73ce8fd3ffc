"""The CIFAR-100 model zoo of the paper's Table 4 and the authors' README, in their 32 px forms.

Importing this package registers every model with timm under a ``cifar_`` name, so
``timm.create_model("cifar_resnet18", num_classes=100)`` works. Each model follows timm's contract:
``forward_features(x)`` is the last map before global pooling (what the Bias Loss reads),
``forward_head(x, pre_logits=False)``, ``reset_classifier``, ``get_classifier``, ``num_features``,
``feature_info``; ``features_only=True`` is supported through timm's hook extractor.
Parameter counts against the paper's figures: ``docs/cifar_zoo.md``.
"""

from timm.models import list_models as _list_models
from timm.models import model_entrypoint as _model_entrypoint

from ._base import CIFAR100_MEAN, CIFAR100_STD, CifarNet
from .densenet import CifarDenseNet
from .mobilenetv2 import CifarMobileNetV2
from .nasnet import CifarNASNetA
from .resnet import CifarResNet
from .shufflenetv2 import CifarShuffleNetV2
from .squeezenet import CifarSqueezeNet

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "MODEL_NAMES",
    "CifarDenseNet",
    "CifarMobileNetV2",
    "CifarNASNetA",
    "CifarNet",
    "CifarResNet",
    "CifarShuffleNetV2",
    "CifarSqueezeNet",
]

#: the timm names this package registers (all start with ``cifar_``)
MODEL_NAMES: tuple[str, ...] = tuple(
    name for name in _list_models("cifar_*") if _model_entrypoint(name).__module__.startswith(__name__ + ".")
)
