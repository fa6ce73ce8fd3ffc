"""MobileNetV2 in its CIFAR form, built from torchvision's MobileNetV2 ``InvertedResidual``.

Paper: "MobileNetV2: Inverted Residuals and Linear Bottlenecks", Sandler et al., CVPR 2018
(arXiv 1801.04381). The paper's Table 2 with two changes for 32 px inputs: the stem is a 3x3
stride-1 conv and the second bottleneck row keeps stride 1, so the input is downsampled 8x in all
(32 -> 4). Channels are scaled by the width multiplier and rounded to multiples of 8 as in
torchvision; the last 1x1 conv keeps 1280 channels for widths below 1 (the paper's rule).

Table 4's "MobileNetV2 0.75x, 2.6M" is the ImageNet count (2.64M here at 1000 classes, 224 px
layout); the CIFAR model at 100 classes has 1.48M.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual, _make_divisible
from torchvision.ops import Conv2dNormActivation

from biasloss.errors import InputError

from ._base import CifarNet, cifar_cfg, create_cifar_model

__all__ = ["CifarMobileNetV2"]

# (t expansion, c channels, n repeats, s stride): the paper's Table 2 rows, 32 px input
_ROWS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),  # 32x32
    (6, 24, 2, 1),  # 32x32  (stride 2 on ImageNet)
    (6, 32, 3, 2),  # 32x32 -> 16x16
    (6, 64, 4, 2),  # 16x16 -> 8x8
    (6, 96, 3, 1),  # 8x8
    (6, 160, 3, 2),  # 8x8 -> 4x4
    (6, 320, 1, 1),  # 4x4
)
_STEM_CHS = 32
_HEAD_CHS = 1280


class CifarMobileNetV2(CifarNet):
    """MobileNetV2 for 32 px inputs, one stage per row of the architecture table.

    ``forward_features`` returns the last 1x1 conv's output (BN, ReLU6), ``(B, 1280, 4, 4)`` at width <= 1.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        rows: Sequence[tuple[int, int, int, int]] = _ROWS,
        round_nearest: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # num_classes, in_chans, drop_rate, global_pool: see CifarNet
        if width_mult <= 0:
            raise InputError(f"width_mult must be > 0, got {width_mult!r}")
        conv_bn_relu6 = partial(Conv2dNormActivation, activation_layer=nn.ReLU6)
        stem_chs = _make_divisible(_STEM_CHS * width_mult, round_nearest)
        head_chs = _make_divisible(_HEAD_CHS * max(1.0, width_mult), round_nearest)
        self.stem = conv_bn_relu6(self.in_chans, stem_chs, 3)
        stages, taps = [], [("stem", stem_chs, 1)]
        in_chs, reduction = stem_chs, 1
        for i, (t, c, n, s) in enumerate(rows):
            out_chs = _make_divisible(c * width_mult, round_nearest)
            blocks = [InvertedResidual(in_chs if j == 0 else out_chs, out_chs, s if j == 0 else 1, t) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_chs, reduction = out_chs, reduction * s
            taps.append((f"stages.{i}", out_chs, reduction))
        self.stages = nn.Sequential(*stages)
        self.final = conv_bn_relu6(in_chs, head_chs, 1)
        taps.append(("final", head_chs, reduction))
        self._init_head(head_chs, taps)


default_cfgs = generate_default_cfgs({"cifar_mobilenetv2_075": cifar_cfg()})


@register_model
def cifar_mobilenetv2_075(pretrained: bool = False, **kwargs: Any) -> CifarMobileNetV2:
    """MobileNetV2 0.75x, CIFAR form: 1,483,524 parameters at 100 classes."""
    return create_cifar_model(CifarMobileNetV2, "cifar_mobilenetv2_075", pretrained, width_mult=0.75, **kwargs)
