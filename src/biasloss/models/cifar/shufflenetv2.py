"""ShuffleNetV2 in its CIFAR form, built from torchvision's ShuffleNetV2 ``InvertedResidual`` units.

Paper: "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", Ma et al.,
ECCV 2018 (arXiv 1807.11164). The ImageNet layout (stages of 4, 8, 4 units, each opening with a
stride-2 unit, then a 1x1 conv to 1024) with the ImageNet stem (3x3/2 conv + 3x3/2 max-pool)
replaced by a 3x3 stride-1 conv: a 32 px input ends at 4 x 4.

Table 4's "ShuffleNetV2 0.5x" is built with the 1.0x channel widths (116, 232, 464), 1.36M
parameters at 100 classes; that is ``cifar_shufflenetv2``. ``cifar_shufflenetv2_x0_5`` has the
paper's real 0.5x widths (48, 96, 192).
"""

from collections.abc import Sequence
from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import nn
from torchvision.models.shufflenetv2 import InvertedResidual
from torchvision.ops import Conv2dNormActivation

from biasloss.errors import InputError

from ._base import CifarNet, cifar_cfg, create_cifar_model

__all__ = ["CifarShuffleNetV2"]

# ShuffleNetV2 paper, Table 5: output channels of (stem, stage 2, stage 3, stage 4, conv5) per width
_WIDTHS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
_REPEATS = (4, 8, 4)


class CifarShuffleNetV2(CifarNet):
    """ShuffleNetV2 for 32 px inputs.

    ``forward_features`` returns the conv5 output (1x1 conv, BN, ReLU), ``(B, 1024, 4, 4)`` at widths <= 1.5.
    """

    def __init__(
        self,
        stage_repeats: Sequence[int] = _REPEATS,
        stage_widths: Sequence[int] = _WIDTHS[1.0],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # num_classes, in_chans, drop_rate, global_pool: see CifarNet
        if len(stage_widths) != len(stage_repeats) + 2:
            raise InputError(
                f"stage_widths needs stem, one width per stage and conv5: {len(stage_repeats) + 2} values, "
                f"got {tuple(stage_widths)}"
            )
        stem_chs, *widths, head_chs = stage_widths
        self.stem = Conv2dNormActivation(self.in_chans, stem_chs, 3)
        stages, taps = [], [("stem", stem_chs, 1)]
        in_chs, reduction = stem_chs, 1
        for i, (repeats, out_chs) in enumerate(zip(stage_repeats, widths)):
            units = [InvertedResidual(in_chs, out_chs, 2)]
            units += [InvertedResidual(out_chs, out_chs, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            in_chs, reduction = out_chs, reduction * 2
            taps.append((f"stages.{i}", out_chs, reduction))
        self.stages = nn.Sequential(*stages)
        self.final = Conv2dNormActivation(in_chs, head_chs, 1)
        taps.append(("final", head_chs, reduction))
        self._init_head(head_chs, taps)


default_cfgs = generate_default_cfgs(
    {
        "cifar_shufflenetv2": cifar_cfg(),
        "cifar_shufflenetv2_x0_5": cifar_cfg(),
    }
)


@register_model
def cifar_shufflenetv2(pretrained: bool = False, **kwargs: Any) -> CifarShuffleNetV2:
    """The authors' "ShuffleNetV2 0.5x" (Table 4), which has the 1.0x widths: 1,356,104 parameters at 100 classes."""
    return create_cifar_model(CifarShuffleNetV2, "cifar_shufflenetv2", pretrained, stage_widths=_WIDTHS[1.0], **kwargs)


@register_model
def cifar_shufflenetv2_x0_5(pretrained: bool = False, **kwargs: Any) -> CifarShuffleNetV2:
    """ShuffleNetV2 with the paper's true 0.5x widths: 444,292 parameters at 100 classes."""
    return create_cifar_model(
        CifarShuffleNetV2, "cifar_shufflenetv2_x0_5", pretrained, stage_widths=_WIDTHS[0.5], **kwargs
    )
