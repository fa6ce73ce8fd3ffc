"""SqueezeNet 1.0 in its CIFAR form, built from torchvision's ``Fire`` module.

Paper: "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
Iandola et al., 2016 (arXiv 1602.07360). Table 4's "SqueezeNet, 1.25M" is SqueezeNet 1.0's
ImageNet count (1,248,424 at 1000 classes). Changes for 32 px inputs and SGD at lr 0.1:

- the 7x7/2 stem becomes a 3x3/1 conv (96 channels); the three 3x3/2 max-pools stay where the
  paper has them (after conv1, fire4, fire8), so 32 px ends at 4 x 4;
- batch norm after every convolution (the paper's SqueezeNet has none);
- conv10 (1x1 conv to the classes) followed by global average pooling is computed as global
  average pooling followed by a linear layer: the same function (both are linear, no ReLU between
  them here) and the same parameters, in the zoo's common head. The paper's dropout (0.5) before
  conv10 is ``drop_rate``.

``forward_features`` returns fire9's output ``(B, 512, 4, 4)``, the last map before the dropout
and the classifier.
"""

from collections.abc import Sequence
from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import nn
from torchvision.models.squeezenet import Fire
from torchvision.ops import Conv2dNormActivation

from ._base import CifarNet, cifar_cfg, create_cifar_model

__all__ = ["CifarSqueezeNet"]

# SqueezeNet 1.0 (paper, Table 1): (squeeze 1x1, expand 1x1, expand 3x3) of each fire module;
# each stage opens with a 3x3/2 max-pool
_FIRES_V1_0: tuple[tuple[tuple[int, int, int], ...], ...] = (
    ((16, 64, 64), (16, 64, 64), (32, 128, 128)),  # fire2-4, 16x16
    ((32, 128, 128), (48, 192, 192), (48, 192, 192), (64, 256, 256)),  # fire5-8, 8x8
    ((64, 256, 256),),  # fire9, 4x4
)
_STEM_CHS = 96


class FireBN(Fire):
    """torchvision's ``Fire`` (its forward) with each convolution followed by batch norm."""

    def __init__(self, in_chs: int, squeeze_chs: int, expand1x1_chs: int, expand3x3_chs: int) -> None:
        super().__init__(in_chs, squeeze_chs, expand1x1_chs, expand3x3_chs)
        self.squeeze = Conv2dNormActivation(in_chs, squeeze_chs, 1, activation_layer=None)
        self.expand1x1 = Conv2dNormActivation(squeeze_chs, expand1x1_chs, 1, activation_layer=None)
        self.expand3x3 = Conv2dNormActivation(squeeze_chs, expand3x3_chs, 3, activation_layer=None)


class CifarSqueezeNet(CifarNet):
    """SqueezeNet 1.0 for 32 px inputs (3x3/1 stem, batch norm in every fire module)."""

    def __init__(
        self,
        fires: Sequence[Sequence[tuple[int, int, int]]] = _FIRES_V1_0,
        stem_width: int = _STEM_CHS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # num_classes, in_chans, drop_rate, global_pool: see CifarNet
        self.stem = Conv2dNormActivation(self.in_chans, stem_width, 3)
        stages, taps = [], [("stem", stem_width, 1)]
        in_chs, reduction = stem_width, 1
        for i, stage in enumerate(fires):
            modules: list[nn.Module] = [nn.MaxPool2d(3, 2, ceil_mode=True)]
            for squeeze, e1, e3 in stage:
                modules.append(FireBN(in_chs, squeeze, e1, e3))
                in_chs = e1 + e3
            stages.append(nn.Sequential(*modules))
            reduction *= 2
            taps.append((f"stages.{i}", in_chs, reduction))
        self.stages = nn.Sequential(*stages)
        self.final = nn.Identity()
        self._init_head(in_chs, taps)


default_cfgs = generate_default_cfgs({"cifar_squeezenet": cifar_cfg()})


@register_model
def cifar_squeezenet(pretrained: bool = False, **kwargs: Any) -> CifarSqueezeNet:
    """SqueezeNet 1.0, CIFAR form with batch norm: 778,180 parameters at 100 classes."""
    return create_cifar_model(CifarSqueezeNet, "cifar_squeezenet", pretrained, **kwargs)
