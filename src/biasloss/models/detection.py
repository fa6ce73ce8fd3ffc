"""SkipblockNet as an object-detection backbone: SSD (paper section 5.4, Table 6).

The paper trains SSD with a SkipblockNet-S feature extractor at 300 x 300 on PASCAL VOC, "extra
layers as in MobileNetV2". MobileNetV2's SSDLite attaches the first prediction layer to the
expansion of the first block at output stride 16 -> 32 (the widest stride-16 map) and the second
to the last layer (stride 32), then adds four stride-2 blocks (1x1 reduce, 3x3 depthwise stride 2,
1x1 expand, each BatchNorm + ReLU6) of 512, 256, 256 and 128 channels. Six maps in all: 19, 10, 5,
3, 2 and 1 pixels square at 300 px. The detector itself is torchvision's
:class:`~torchvision.models.detection.SSD` with its box coder, matcher, hard-negative mining and
post-processing, and the default boxes are those of SSD
(:class:`~torchvision.models.detection.anchor_utils.DefaultBoxGenerator`, aspect ratios 2 and 3).
The prediction heads are SSD's 3x3 convolutions (``head="ssd"``,
:class:`~torchvision.models.detection.ssd.SSDHead`; Table 6's 9.4M-parameter detector has heads
of that size) or MobileNetV2's SSDLite ones (``head="ssdlite"``: 3x3 depthwise, BatchNorm, ReLU6,
then 1x1, torchvision's :class:`~torchvision.models.detection.ssdlite.SSDLiteHead`), about a
seventh of the multiply-adds (SkipblockNet-XS at 224 px: 80 -> 11 M).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.models.feature_extraction import create_feature_extractor

from biasloss.errors import InputError, InputTypeError

from .skipblocknet import SKIPBLOCKNET_VARIANTS, SkipblockNet

__all__ = ["HEADS", "MIN_SIZE", "SkipblockNetSSDFeatures", "ssd_skipblocknet"]

#: The prediction heads :func:`ssd_skipblocknet` builds.
HEADS = ("ssd", "ssdlite")

#: The smallest input side :func:`ssd_skipblocknet` takes: SkipblockNet's output stride. At 16 px
#: or less every one of the six feature maps is a single pixel and every default box is centred on
#: the image, so the detector cannot say where anything is; it trains and reports a mAP all the
#: same. Below 32 px the image is smaller than one cell of the trunk's last map.
MIN_SIZE = 32


def _extra_block(in_chs: int, out_chs: int) -> nn.Sequential:  # MobileNetV2-SSDLite's (the module doc)
    mid = out_chs // 2
    return nn.Sequential(
        nn.Conv2d(in_chs, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
        nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
        nn.Conv2d(mid, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs), nn.ReLU6(inplace=True),
    )


class SkipblockNetSSDFeatures(nn.Module):
    """The six SSD feature maps from a SkipblockNet trunk (its classifier is dropped).

    ``forward(x)`` returns an ``OrderedDict`` of maps at strides 16, 32, 64, 128, 256 and 512 (for
    300 px: 19, 10, 5, 3, 2, 1); ``out_channels`` lists their widths. The trunk is torchvision's
    :func:`~torchvision.models.feature_extraction.create_feature_extractor` of the SkipblockNet
    (same modules and state-dict keys), returning the stride-16 expansion and the head's map.
    """

    def __init__(self, trunk: SkipblockNet, extra_chs: Sequence[int] = (512, 256, 256, 128)) -> None:
        super().__init__()
        if not isinstance(trunk, SkipblockNet):
            raise InputTypeError(f"trunk must be a SkipblockNet, got {type(trunk).__name__}")
        if trunk.small_input:
            raise InputError("SSD needs the standard stride-32 layout (small_input=False)")
        block_name = _stride16_to_32_block(trunk)
        c16_chs = trunk.get_submodule(block_name).conv_pw.out_channels
        self.c16_name = f"{block_name}.bn1"  # the stride-16 expansion (BatchNorm + act) in the trunk
        self.trunk = create_feature_extractor(trunk, {self.c16_name: "c16", "bn2": "c32"})
        in_chs = [trunk.num_features, *extra_chs]
        self.extras = nn.ModuleList(_extra_block(i, o) for i, o in zip(in_chs, extra_chs))
        self.out_channels: List[int] = [c16_chs, trunk.num_features, *extra_chs]
        for m in self.extras.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        taps = self.trunk(x)
        x = taps["c32"]
        maps = [taps["c16"], x]
        for block in self.extras:
            x = block(x)
            maps.append(x)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


def _stride16_to_32_block(trunk: SkipblockNet) -> str:
    """The name of the block that downsamples 16 -> 32 (SSDLite taps its expansion)."""
    reduction = trunk.conv_stem.stride[0]
    for i, stage in enumerate(trunk.stages):
        for j, block in enumerate(stage.blocks):
            stride = block.conv_dw.stride[0]
            if reduction == 16 and stride == 2:
                return f"stages.{i}.blocks.{j}"
            reduction *= stride
    raise ValueError("the trunk has no stride-2 block at output stride 16")


def ssd_skipblocknet(
    variant: str = "skipblocknet_s",
    num_classes: int = 21,
    size: int = 300,
    *,
    trunk: Optional[SkipblockNet] = None,
    head: str = "ssd",
    **ssd_kwargs: Any,
) -> SSD:
    """SSD with a SkipblockNet feature extractor (Table 6: SkipblockNet-S, 300 px, PASCAL VOC).

    Args:
        variant: ``skipblocknet_xs/s/m/l`` (ignored when ``trunk`` is given).
        num_classes: object classes plus background (21 for PASCAL VOC).
        size: input side in pixels, at least :data:`MIN_SIZE` (32); images are resized to it by the SSD
            transform.
        trunk: a SkipblockNet to use, e.g. one holding ImageNet weights
            (:func:`~biasloss.models.load_pretrained`); its classifier is removed.
        head: ``"ssd"`` (3x3 convolutions, the paper's) or ``"ssdlite"`` (separable, MobileNetV2's
            SSDLite; BatchNorm eps 1e-3, momentum 0.03 as torchvision's SSDLite).
        **ssd_kwargs: passed to torchvision's ``SSD`` (``score_thresh``, ``nms_thresh``, ...).
    """
    if trunk is None:
        if variant not in SKIPBLOCKNET_VARIANTS:
            raise InputError(f"unknown SkipblockNet variant {variant!r}; one of {', '.join(SKIPBLOCKNET_VARIANTS)}")
        trunk = SkipblockNet(SKIPBLOCKNET_VARIANTS[variant], num_classes=0)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise InputError(f"num_classes counts the background too and must be >= 2, got {num_classes!r}")
    if head not in HEADS:
        raise InputError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise InputError(f"size must be an int of at least {MIN_SIZE} px (SkipblockNet's output stride; smaller, "
                         f"every feature map is a pixel or two), got {size!r}")
    features = SkipblockNetSSDFeatures(trunk)
    anchors = DefaultBoxGenerator([[2, 3] for _ in features.out_channels], min_ratio=0.2, max_ratio=0.95)
    per_location = anchors.num_anchors_per_location()
    if head == "ssd":
        predictor: nn.Module = SSDHead(features.out_channels, per_location, num_classes)
    else:
        predictor = SSDLiteHead(features.out_channels, per_location, num_classes,
                                partial(nn.BatchNorm2d, eps=0.001, momentum=0.03))
    ssd_kwargs.setdefault("image_mean", [0.485, 0.456, 0.406])
    ssd_kwargs.setdefault("image_std", [0.229, 0.224, 0.225])
    return SSD(features, anchors, (size, size), num_classes, head=predictor, **ssd_kwargs)
