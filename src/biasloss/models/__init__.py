"""Models: SkipblockNet (also registered with timm), the authors' checkpoint, a model factory.

Importing this package registers ``skipblocknet_xs/s/m/l`` with timm, so that
``timm.create_model("skipblocknet_m", num_classes=10)`` works after ``import biasloss``.
"""

from ._layers import fuse_bn
from .factory import create_model, is_model, list_models, register, unknown_model_error
from .official import convert_official_state_dict, official_key_map
from .pretrained import (
    PretrainedReport,
    evaluated_weights,
    load_official_weights,
    load_pretrained,
    to_official_state_dict,
)
from .skipblocknet import (
    SKIPBLOCKNET_ARCH,
    SKIPBLOCKNET_VARIANTS,
    BlockDef,
    SkipblockNet,
    SkipblockNetCfg,
    skipblocknet_l,
    skipblocknet_m,
    skipblocknet_s,
    skipblocknet_xs,
)

__all__ = [
    "SkipblockNet",
    "SkipblockNetCfg",
    "BlockDef",
    "SKIPBLOCKNET_ARCH",
    "SKIPBLOCKNET_VARIANTS",
    "skipblocknet_xs",
    "skipblocknet_s",
    "skipblocknet_m",
    "skipblocknet_l",
    "load_official_weights",
    "load_pretrained",
    "evaluated_weights",
    "PretrainedReport",
    "convert_official_state_dict",
    "to_official_state_dict",
    "official_key_map",
    "fuse_bn",
    "create_model",
    "is_model",
    "list_models",
    "register",
    "unknown_model_error",
]
