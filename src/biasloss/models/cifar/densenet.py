"""DenseNet in its CIFAR forms, built from torchvision's ``_DenseBlock`` and ``_Transition``.

Paper: "Densely Connected Convolutional Networks", Huang et al., CVPR 2017 (arXiv 1608.06993).

- ``cifar_densenet_k12``: the paper's CIFAR "DenseNet (k = 12)" of depth L = 100 (its Table 2:
  7.0M parameters), the configuration whose size matches Table 4's "DenseNet (k=12), 7M": three
  dense blocks of (L - 4) / 3 = 32 layers, each layer the original composite BN-ReLU-Conv3x3
  (no bottleneck), transitions without compression, a 16-channel 3x3 stem.
- ``cifar_densenet121``: DenseNet-121 (k = 32, blocks 6-12-24-16, bottleneck 4k, compression 0.5)
  with a 3x3 stride-1 stem of 2k channels and no max-pool (the authors' README model).

The network is pre-activation: ``final`` is the last BN + ReLU, and ``forward_features`` returns its
output, the map that is pooled.
"""

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn
from torchvision.models.densenet import _DenseBlock, _Transition

from biasloss.errors import InputError

from ._base import CifarNet, cifar_cfg, create_cifar_model

__all__ = ["CifarDenseNet"]


class _PlainDenseLayer(nn.Sequential):
    """DenseNet's original composite function H_l: BN-ReLU-Conv3x3 on the concatenated earlier maps."""

    def __init__(self, in_chs: int, growth_rate: int, drop_rate: float = 0.0) -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(in_chs),
                relu=nn.ReLU(inplace=True),
                conv=nn.Conv2d(in_chs, growth_rate, 3, padding=1, bias=False),
                drop=nn.Dropout(drop_rate),
            )
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        # the layers by name, not Sequential's loop over the input: TorchScript types this one
        return self.drop(self.conv(self.relu(self.norm(torch.cat(features, 1)))))


class _PlainDenseBlock(_DenseBlock):
    """torchvision's dense block (its concatenating forward) holding non-bottleneck layers."""

    def __init__(self, num_layers: int, in_chs: int, growth_rate: int, drop_rate: float = 0.0) -> None:
        super().__init__(0, in_chs, bn_size=1, growth_rate=growth_rate, drop_rate=drop_rate)
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", _PlainDenseLayer(in_chs + i * growth_rate, growth_rate, drop_rate))


class CifarDenseNet(CifarNet):
    """DenseNet for 32 px inputs: 3x3/1 stem, dense blocks joined by BN-ReLU-Conv1x1-AvgPool transitions.

    Args:
        growth_rate: k, channels each layer adds.
        block_config: layers per dense block.
        stem_width: stem channels (16 for the basic CIFAR DenseNet, 2k for DenseNet-BC/-121).
        bottleneck: BN-ReLU-Conv1x1(bn_size * k)-BN-ReLU-Conv3x3 layers (DenseNet-B) instead of BN-ReLU-Conv3x3.
        compression: theta, the fraction of channels a transition keeps (DenseNet-C when < 1).
        block_drop_rate: dropout after each dense layer's convolution (0.2 in the paper without augmentation).
    """

    def __init__(
        self,
        growth_rate: int = 12,
        block_config: Sequence[int] = (32, 32, 32),
        stem_width: int = 16,
        bottleneck: bool = False,
        bn_size: int = 4,
        compression: float = 1.0,
        block_drop_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # num_classes, in_chans, drop_rate, global_pool: see CifarNet
        if not 0.0 < compression <= 1.0:
            raise InputError(f"compression must be in (0, 1], got {compression!r}")
        # a bare convolution: every dense layer starts with BN-ReLU
        self.stem = nn.Sequential(nn.Conv2d(self.in_chans, stem_width, 3, padding=1, bias=False))
        stages, taps = [], [("stem", stem_width, 1)]
        chs, reduction = stem_width, 1
        for i, num_layers in enumerate(block_config):
            parts: list[nn.Module] = []
            if i > 0:  # each later stage opens with the transition that halves the resolution
                out_chs = int(chs * compression)
                parts.append(_Transition(chs, out_chs))
                chs, reduction = out_chs, reduction * 2
            if bottleneck:
                parts.append(_DenseBlock(num_layers, chs, bn_size, growth_rate, block_drop_rate))
            else:
                parts.append(_PlainDenseBlock(num_layers, chs, growth_rate, block_drop_rate))
            chs += num_layers * growth_rate
            stages.append(nn.Sequential(*parts))
            taps.append((f"stages.{i}", chs, reduction))
        self.stages = nn.Sequential(*stages)
        self.final = nn.Sequential(OrderedDict(norm=nn.BatchNorm2d(chs), act=nn.ReLU(inplace=True)))
        taps.append(("final", chs, reduction))
        self._init_head(chs, taps)


default_cfgs = generate_default_cfgs(
    {
        "cifar_densenet_k12": cifar_cfg(pool_size=(8, 8)),
        "cifar_densenet121": cifar_cfg(),
    }
)


@register_model
def cifar_densenet_k12(pretrained: bool = False, **kwargs: Any) -> CifarDenseNet:
    """DenseNet (k=12, L=100), basic (no bottleneck, no compression): 7,084,852 parameters at 100 classes."""
    return create_cifar_model(
        CifarDenseNet, "cifar_densenet_k12", pretrained, num_levels=3, growth_rate=12, block_config=(32, 32, 32),
        stem_width=16, **kwargs,
    )


@register_model
def cifar_densenet121(pretrained: bool = False, **kwargs: Any) -> CifarDenseNet:
    """DenseNet-121 (k=32, BC), CIFAR stem: 7,048,548 parameters at 100 classes."""
    return create_cifar_model(
        CifarDenseNet,
        "cifar_densenet121",
        pretrained,
        growth_rate=32,
        block_config=(6, 12, 24, 16),
        stem_width=64,
        bottleneck=True,
        compression=0.5,
        **kwargs,
    )
