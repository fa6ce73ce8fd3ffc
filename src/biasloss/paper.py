"""The numbers quoted from the paper, in one place: plain data that the commands print beside ours.

Paper: "Bias Loss for Mobile Neural Networks", Abrahamyan et al., ICCV 2021. Table 1 (ImageNet MACs,
parameters and accuracy) and Table 2 (phone latency) are what ``biasloss profile`` and ``biasloss
plot tradeoff`` compare with; Tables 3 and 4 (top-1 by loss, with the authors' README rows) are
``biasloss reproduce``'s; Table 5 (per-sample feature variance) is ``biasloss variance``'s; the
weight function's (alpha, beta) of Figure 2 is ``biasloss plot weights``'s. Nothing here computes:
this module imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PAPER_ALPHA_BETA", "PAPER_MODELS", "PAPER_TABLE1", "PAPER_TABLE2", "PAPER_TABLE5", "PAPER_TOP1",
           "PaperFigures", "PaperRow", "bias_gain_range"]


@dataclass(frozen=True)
class PaperFigures:
    """One model as the paper reports it. ``macs``/``params`` are counts (246M -> 246_000_000);
    ``None`` where the paper gives no figure."""

    name: str
    macs: int | None = None
    params: int | None = None
    top1: float | None = None
    top5: float | None = None
    pixel4_ms: float | None = None
    pixel3_ms: float | None = None


#: Table 1 (ImageNet, 224 px): name, MACs and params (millions), top-1, top-5, in the paper's order.
PAPER_TABLE1: tuple[PaperFigures, ...] = tuple(
    PaperFigures(name, round(macs * 1e6), round(params * 1e6), top1, top5)
    for name, macs, params, top1, top5 in (
        ("MobileNetV2 0.5x", 97, 2.0, 65.4, 86.4),
        ("MUXNet-xs", 66, 1.8, 66.7, 86.8),
        ("MobileNetV3 Small 1.0x", 66, 2.9, 67.4, None),
        ("SkipblockNet-XS", 81, 2.3, 69.9, 88.9),
        ("ShuffleNetV2 1.0x", 146, 2.3, 69.4, 88.9),
        ("MUXNet-s", 117, 2.4, 71.6, 90.3),
        ("ChamNet-C", 212, 3.4, 71.6, None),
        ("MobileNetV3 Large 0.75x", 155, 4.0, 73.3, None),
        ("SkipblockNet-S", 152, 3.6, 73.8, 91.4),
        ("FBNet-A", 249, 4.3, 73.0, None),
        ("MobileNetV3 Large 1.0x", 219, 5.4, 75.2, None),
        ("MUXNet-m", 218, 3.4, 75.3, 92.5),
        ("GhostNet 1.3x", 226, 7.3, 75.7, 92.7),
        ("MixNet-S", 256, 4.1, 75.8, 92.8),
        ("SkipblockNet-M", 246, 5.5, 76.2, 92.8),
        ("ProxylessNAS", 320, 4.1, 74.6, 92.2),
        ("MnasNet-A2", 340, 4.8, 75.6, 92.7),
        ("EfficientNet-B0", 390, 5.3, 76.3, 93.2),
        ("MUXNet-l", 318, 4.0, 76.6, 93.2),
        ("MobileNetV3 Large 1.25x", 356, 7.5, 76.6, None),
        ("SkipblockNet-L", 364, 7.1, 77.1, 93.4),
    )
)

#: Table 2: top-1 and latency (ms) on one core of a Pixel 4 / Pixel 3, batch 1, PyTorch 1.6 Mobile.
PAPER_TABLE2: dict[str, tuple[float, float, float]] = {
    "SkipblockNet-M": (76.2, 27, 42),
    "GhostNet 1.3x": (75.7, 27, 41),
    "MnasNet-A2": (75.6, 21, 39),
    "MobileNetV3 Large 1.0x": (75.2, 26, 38),
    "MobileNetV2 1.0x": (71.8, 27, 38),
}

#: Our model names (biasloss, timm, torchvision) -> the paper's name, where the mapping is clear.
#: Not mapped: MUXNet, ChamNet, FBNet-A, ProxylessNAS (no implementation in timm/torchvision) and
#: MnasNet-A2 (timm has A1 and B1, torchvision B1 only); MobileNetV3 Large 1.25x (not registered).
PAPER_MODELS: dict[str, str] = {
    "skipblocknet_xs": "SkipblockNet-XS",
    "skipblocknet_s": "SkipblockNet-S",
    "skipblocknet_m": "SkipblockNet-M",
    "skipblocknet_l": "SkipblockNet-L",
    "mobilenetv3_large_100": "MobileNetV3 Large 1.0x",
    "tf_mobilenetv3_large_100": "MobileNetV3 Large 1.0x",
    "torchvision.mobilenet_v3_large": "MobileNetV3 Large 1.0x",
    "mobilenetv3_large_075": "MobileNetV3 Large 0.75x",
    "tf_mobilenetv3_large_075": "MobileNetV3 Large 0.75x",
    "mobilenetv3_small_100": "MobileNetV3 Small 1.0x",
    "tf_mobilenetv3_small_100": "MobileNetV3 Small 1.0x",
    "torchvision.mobilenet_v3_small": "MobileNetV3 Small 1.0x",
    "mobilenetv2_050": "MobileNetV2 0.5x",
    "mobilenetv2_100": "MobileNetV2 1.0x",
    "torchvision.mobilenet_v2": "MobileNetV2 1.0x",
    "torchvision.shufflenet_v2_x1_0": "ShuffleNetV2 1.0x",
    "ghostnet_130": "GhostNet 1.3x",
    "mixnet_s": "MixNet-S",
    "tf_mixnet_s": "MixNet-S",
    "efficientnet_b0": "EfficientNet-B0",
    "tf_efficientnet_b0": "EfficientNet-B0",
    "torchvision.efficientnet_b0": "EfficientNet-B0",
}


@dataclass(frozen=True)
class PaperRow:
    """A row of Tables 3 and 4 (top-1 by loss): the paper's model name and where the numbers come from."""

    label: str
    source: str
    top1: Mapping[str, float]  # loss -> top-1 %


_T4 = "Table 4"
_README = "authors' README (their running-min scaling, cifar100-authors recipe)"
_T3 = "Table 3"
_SHUFFLENET = PaperRow("ShuffleNetV2 0.5x", _T4, {"ce": 69.5, "focal": 69.8, "bias": 71.0})
_MOBILENETV3 = PaperRow("MobileNetV3 Large 1.0x", _T3, {"ce": 75.2, "bias": 75.7})

#: dataset -> model name -> the paper's row: Table 4 and the authors' README (CIFAR-100, five
#: compact models x cross-entropy, focal loss and Bias Loss) and Table 3 (ImageNet ablation).
PAPER_TOP1: dict[str, dict[str, PaperRow]] = {
    "cifar100": {
        "cifar_shufflenetv2": _SHUFFLENET,  # the authors' "0.5x" (1.4M parameters), see the zoo
        "cifar_shufflenetv2_x0_5": _SHUFFLENET,
        "cifar_mobilenetv2_075": PaperRow("MobileNetV2 0.75x", _T4, {"ce": 68.0, "focal": 68.2, "bias": 68.6}),
        "cifar_nasnet_a": PaperRow("NASNet-A (N=4)", _T4, {"ce": 77.2, "focal": 77.5, "bias": 78.0}),
        "cifar_squeezenet": PaperRow("SqueezeNet", _T4, {"ce": 69.4, "focal": 69.8, "bias": 70.4}),
        "cifar_densenet_k12": PaperRow("DenseNet (k=12)", _T4, {"ce": 78.9, "focal": 79.5, "bias": 79.9}),
        "cifar_resnet18": PaperRow("ResNet18", _README, {"ce": 74.33, "bias": 75.51}),
        "cifar_densenet121": PaperRow("DenseNet121", _README, {"ce": 75.98, "bias": 77.83}),
    },
    "imagenet": {
        "mobilenetv3_large_100": _MOBILENETV3,
        "torchvision.mobilenet_v3_large": _MOBILENETV3,
        "skipblocknet_m": PaperRow("SkipblockNet-M", _T3, {"ce": 75.5, "bias": 76.2}),
    },
}


def bias_gain_range(source: str) -> tuple[float, float]:
    """The smallest and largest Bias Loss gain over cross-entropy (top-1 points) among the rows of
    :data:`PAPER_TOP1` from ``source`` (``"Table 3"``, ``"Table 4"``)."""
    gains = {round(row.top1["bias"] - row.top1["ce"], 2) for rows in PAPER_TOP1.values() for row in rows.values()
             if row.source == source}
    return min(gains), max(gains)


#: Table 5 of the paper: (model, loss, ((avg, max, min) at the 5th, 20th, last conv layer)).
PAPER_TABLE5: tuple[tuple[str, str, tuple[tuple[float, float, float], ...]], ...] = (
    ("SkipblockNet-M", "CE", ((1.7, 2.4, 1.6), (0.6, 1.2, 0.1), (0.09, 0.2, 0.04))),
    ("SkipblockNet-M", "bias", ((2.0, 2.5, 1.7), (1.0, 1.6, 0.2), (0.15, 0.2, 0.09))),
    ("ShuffleNet", "CE", ((1.2, 1.6, 0.9), (0.3, 0.5, 0.02), (0.02, 0.07, 0.01))),
    ("ShuffleNet", "bias", ((1.4, 1.7, 0.9), (0.4, 0.7, 0.03), (0.04, 0.1, 0.02))),
    ("MobileNetV3 1.0x", "CE", ((1.7, 2.3, 1.6), (0.4, 1.0, 0.06), (0.05, 0.09, 0.01))),
    ("MobileNetV3 1.0x", "bias", ((1.9, 2.4, 1.9), (0.7, 1.5, 0.1), (0.09, 0.1, 0.03))),
    ("Inception V3", "CE", ((3.3, 5.9, 1.9), (5.2, 9.3, 2.4), (0.7, 3.6, 0.2))),
    ("DenseNet", "CE", ((3.0, 6.1, 1.9), (4.1, 7.2, 1.4), (0.7, 2.4, 0.2))),
)

#: The weight function's (alpha, beta) the paper chose (Figure 2 draws it among others).
PAPER_ALPHA_BETA: tuple[float, float] = (0.3, 0.3)
