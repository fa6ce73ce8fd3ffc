"""Shared machinery of the CIFAR zoo: the timm model contract, weight init, builder, default cfg.

Every model of the zoo is ``stem -> stages -> final -> head``:

- ``stem``: a stride-1 3x3 convolution (32 px inputs are not downsampled at the start);
- ``stages``: an ``nn.Sequential`` of stages, a stage that downsamples does it first (timm's layout);
- ``final``: what follows the last stage before pooling (a head convolution, a last norm + act, or
  ``nn.Identity``); its output is ``forward_features(x)``, the pre-pool map the Bias Loss reads;
- ``head``: timm's ``ClassifierHead`` (global pool, dropout, linear).
"""

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg
from torch import nn

from biasloss.errors import InputError
from biasloss.models.utils import take_indices

__all__ = ["CifarNet", "CIFAR100_MEAN", "CIFAR100_STD"]

CIFAR100_MEAN = (0.507, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2761)


class CifarNet(nn.Module):
    """Base class: argument checks, the timm contract and weight init shared by the zoo.

    Subclasses call ``super().__init__(...)``, build ``stem``, ``stages`` and ``final``, then call
    ``self._init_head(num_features, taps)``.
    """

    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise InputError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise InputError(f"in_chans must be an int >= 1, got {in_chans!r}")
        if not 0.0 <= float(drop_rate) < 1.0:
            raise InputError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = float(drop_rate)
        self.global_pool = global_pool
        self.grad_checkpointing = False

    def _init_head(self, num_features: int, taps: Sequence[tuple[str, int, int]]) -> None:
        """Head and weight init; ``feature_info`` from the ``(module, num_chs, reduction)`` taps in forward
        order, the last tap at each reduction: one entry per resolution, the last the map ``forward_features``
        returns."""
        self.num_features = self.head_hidden_size = num_features
        by_reduction = {red: dict(num_chs=chs, reduction=red, module=module) for module, chs, red in taps}
        self.feature_info = list(by_reduction.values())
        self.head = ClassifierHead(
            num_features, self.num_classes, pool_type=self.global_pool, drop_rate=self.drop_rate
        )
        self.apply(_init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise NotImplementedError(f"{type(self).__name__} does not support gradient checkpointing")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise InputError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head.reset(num_classes, pool_type=global_pool)
        if isinstance(self.head.fc, nn.Linear):
            _init_weights(self.head.fc)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map before global pooling, ``(B, num_features, H, W)``."""
        x = self.stem(x)
        x = self.stages(x)
        return self.final(x)

    @torch.jit.ignore
    def _taps(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """``forward_features`` step by step: ``(module name, its output)`` for ``stem``, each
        ``stages.<i>`` and ``final`` (the names ``feature_info`` uses)."""
        taps = [("stem", self.stem(x))]
        for i, stage in enumerate(self.stages):
            taps.append((f"stages.{i}", stage(taps[-1][1])))
        taps.append(("final", self.final(taps[-1][1])))
        return taps

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: the maps of ``feature_info`` (all, the last ``indices`` if an int,
        else those taps) and, unless ``intermediates_only``, ``forward_features(x)``. ``norm`` and
        ``stop_early`` are accepted for timm's signature (every tap is computed)."""
        if output_fmt != "NCHW":
            raise InputError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        taken, _ = take_indices(len(self.feature_info), indices)
        wanted = [self.feature_info[i]["module"] for i in taken]
        maps = dict(self._taps(x))
        intermediates = [maps[name] for name in wanted]
        return intermediates if intermediates_only else (maps["final"], intermediates)

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's feature API: the taps ``indices`` asks for; without ``prune_head`` nothing is removed."""
        taken, _ = take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0)
        return taken

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    """He-normal (fan-out) convolutions, unit/zero norms, N(0, 0.01) classifier: torchvision's CIFAR-style init."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.01)
        nn.init.zeros_(module.bias)


def create_cifar_model(
    model_cls: type[CifarNet], variant: str, pretrained: bool = False, num_levels: int = 4, **kwargs: Any
) -> CifarNet:
    """timm's ``build_model_with_cfg``; ``features_only=True`` taps the first ``num_levels`` of ``feature_info``
    with hooks."""
    if pretrained:
        raise InputError(f"{variant}: no pretrained CIFAR weights are published for this model")
    feature_cfg = dict(feature_cls="hook", no_rewrite=True, out_indices=tuple(range(num_levels)))
    return build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


def cifar_cfg(pool_size: tuple[int, int] = (4, 4)) -> dict[str, Any]:
    """A pretrained_cfg without weights: CIFAR-100 input size, normalisation and classes."""
    return {
        "url": "",
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": pool_size,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "first_conv": "stem.0",
        "classifier": "head.fc",
    }
