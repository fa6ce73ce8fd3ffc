"""ResNet in its CIFAR form, built from torchvision's ``BasicBlock``/``Bottleneck``.

Paper: "Deep Residual Learning for Image Recognition", He et al., CVPR 2016 (arXiv 1512.03385).
The CIFAR form of the ImageNet ResNet-18 (the authors' README reports it on CIFAR-100): a 3x3
stride-1 stem without max-pool, then the four ImageNet stages (64, 128, 256, 512 channels, strides
1, 2, 2, 2), so a 32 px input ends at 4 x 4.
"""

from collections.abc import Sequence
from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1
from torchvision.ops import Conv2dNormActivation

from biasloss.errors import InputError

from ._base import CifarNet, cifar_cfg, create_cifar_model

__all__ = ["CifarResNet"]

# stage widths of the ImageNet ResNets; stage 0 keeps the stem's resolution
_WIDTHS = (64, 128, 256, 512)


class CifarResNet(CifarNet):
    """ResNet for 32 px inputs: 3x3/1 stem (conv, BN, ReLU), no max-pool, four stages.

    ``forward_features`` returns the last block's output (after its ReLU), ``(B, 512 * expansion, 4, 4)``.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        block: type[BasicBlock | Bottleneck] = BasicBlock,
        widths: Sequence[int] = _WIDTHS,
        stem_width: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # num_classes, in_chans, drop_rate, global_pool: see CifarNet
        if len(layers) != len(widths):
            raise InputError(f"layers {tuple(layers)} and widths {tuple(widths)} differ in length")
        self.stem = Conv2dNormActivation(self.in_chans, stem_width, 3)
        stages, taps = [], [("stem", stem_width, 1)]
        in_chs, reduction = stem_width, 1
        for i, (depth, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            out_chs = width * block.expansion
            downsample = None
            if stride != 1 or in_chs != out_chs:
                downsample = nn.Sequential(conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs))
            blocks = [block(in_chs, width, stride, downsample)]
            blocks += [block(out_chs, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_chs, reduction = out_chs, reduction * stride
            taps.append((f"stages.{i}", out_chs, reduction))
        self.stages = nn.Sequential(*stages)
        self.final = nn.Identity()
        self._init_head(in_chs, taps)


default_cfgs = generate_default_cfgs({"cifar_resnet18": cifar_cfg()})


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-18, CIFAR form: 11,220,132 parameters at 100 classes (the authors' README model)."""
    return create_cifar_model(
        CifarResNet, "cifar_resnet18", pretrained, layers=(2, 2, 2, 2), block=BasicBlock, **kwargs
    )
