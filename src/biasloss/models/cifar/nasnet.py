"""NASNet-A in its CIFAR form, built from timm's NASNet-A normal and reduction cells.

Paper: "Learning Transferable Architectures for Scalable Image Recognition", Zoph et al., CVPR 2018
(arXiv 1707.07012). The CIFAR network (the paper's Figure 2, left; the TF-slim ``nasnet_cifar``
layout): a 3x3 conv + BN stem with ``stem_multiplier * F`` channels, then N normal cells, a
reduction cell, N normal cells, a reduction cell, N normal cells, ReLU, global average pooling.
F (``num_conv_filters``) doubles at each reduction cell; a normal cell outputs 6 x its filters, a
reduction cell 4 x, so the network ends with 24 F channels ("N @ 24F" in the paper's notation:
NASNet-A 6 @ 768 has N = 6, F = 32).

The cells are timm's (``timm.models.nasnet``), which hold the NASNet-A genotype found by the search
(TF-slim's ``NasNetANormalCell`` / ``NasNetAReductionCell``):

    normal cell, h = current input (after ReLU-1x1-BN), p = previous input (same):
        sep5x5(h) + sep3x3(p),  sep5x5(p) + sep3x3(p),  avg3x3(h) + p,
        avg3x3(p) + avg3x3(p),  sep3x3(h) + h;  output concat(p, the five sums) = 6 F
    reduction cell:
        c0 = sep5x5/2(h) + sep7x7/2(p),  c1 = max3x3/2(h) + sep7x7/2(p),
        c2 = avg3x3/2(h) + sep5x5/2(p),  c3 = avg3x3(c0) + c1,  c4 = sep3x3(c0) + max3x3/2(h);
        output concat(c1, c2, c3, c4) = 4 F

where sepKxK is ReLU-separable conv-BN applied twice. A normal cell whose previous input has twice
its resolution (the one after a reduction cell) reduces it with the factorized reduction (two
shifted 1x1/2 paths, concatenated, BN): timm's ``FirstCell``.

Wiring (TF ``skip_reduction_layer_input = 0`` as in ``nasnet_cifar``): every cell, reduction cells
included, takes (previous cell's output, the one before it); the first cell takes the stem twice.

Differences from the TF-slim CIFAR model, by design of the reused cells or left out:
- the first cell projects its previous input (the stem) once with ReLU-1x1-BN, where TF feeds the
  raw stem to each operation and projects per operation (a few thousand parameters);
- no auxiliary head and no scheduled drop-path (regularisers that do not change the forward graph
  at test time); ``drop_rate`` is the dropout before the classifier.

Table 4's "NASNet-A (N=4), 5.3M" gives N; F is not stated. ``num_conv_filters = 49`` is the F whose
count rounds to 5.3M at 100 classes (5,313,170; F = 48 gives 5.11M, F = 50 5.52M). As a check of
the cells, 6 @ 768 (N = 6, F = 32) at 10 classes has 3,328,234 parameters: the paper's 3.3M.
"""

from functools import partial
from typing import Any

import torch
from timm.models import generate_default_cfgs, register_model
from timm.models.nasnet import FirstCell, NormalCell, ReductionCell0
from torch import nn
from torchvision.ops import Conv2dNormActivation

from biasloss.errors import InputError

from ._base import CifarNet, cifar_cfg, create_cifar_model

__all__ = ["CifarNASNetA", "nasnet_cifar_layout"]


def nasnet_cifar_layout(num_cells: int, num_reductions: int = 2) -> str:
    """The cell sequence: ``N`` normal, ``R`` reduction, a reduction before each of the later stacks."""
    return "R".join(["N" * num_cells] * (num_reductions + 1))


class CifarNASNetA(CifarNet):
    """NASNet-A for 32 px inputs.

    Args:
        num_cells: N, normal cells per stack (3 stacks).
        num_conv_filters: F, filters of the first stack's cells.
        stem_multiplier: stem channels = stem_multiplier * F (3 in the paper).
        num_reductions: reduction cells (2 for CIFAR).
        filter_scaling_rate: filter multiplier at each reduction cell (2).

    ``forward_features`` returns the last cell's output after ReLU, ``(B, 24 F, 8, 8)``.
    """

    def __init__(
        self,
        num_cells: int = 4,
        num_conv_filters: int = 49,
        stem_multiplier: int = 3,
        num_reductions: int = 2,
        filter_scaling_rate: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # num_classes, in_chans, drop_rate, global_pool: see CifarNet
        if num_cells < 1 or num_conv_filters < 1 or stem_multiplier < 1:
            raise InputError("num_cells, num_conv_filters and stem_multiplier must be >= 1")
        stem_chs = stem_multiplier * num_conv_filters
        bn_tf = partial(nn.BatchNorm2d, eps=1e-3)  # TF's epsilon, as in timm's cells
        self.stem = Conv2dNormActivation(self.in_chans, stem_chs, 3, norm_layer=bn_tf, activation_layer=None)
        self.layout = nasnet_cifar_layout(num_cells, num_reductions)
        # (channels, reduction) of the previous two cell outputs: the first cell sees the stem twice
        prev, cur = (stem_chs, 1), (stem_chs, 1)
        filters = num_conv_filters
        cells: list[nn.Module] = []
        taps = [("stem", stem_chs, 1)]
        for i, kind in enumerate(self.layout):
            if kind == "R":
                filters *= filter_scaling_rate
                cell = ReductionCell0(prev[0], filters, cur[0], filters)
                out = (4 * filters, cur[1] * 2)
            elif prev[1] != cur[1]:  # previous input at twice the resolution: factorized reduction
                cell = FirstCell(prev[0], filters // 2, cur[0], filters)
                out = (2 * (filters // 2) + 5 * filters, cur[1])
            else:
                cell = NormalCell(prev[0], filters, cur[0], filters)
                out = (6 * filters, cur[1])
            cells.append(cell)
            prev, cur = cur, out
            taps.append((f"cells.{i}", *out))
        self.cells = nn.ModuleList(cells)
        self.final = nn.ReLU()
        taps.append(("final", *cur))
        self._init_head(cur[0], taps)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^cells\.(\d+)")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x_prev = x
        for cell in self.cells:
            x_prev, x = x, cell(x, x_prev)
        return self.final(x)

    @torch.jit.ignore
    def _taps(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        x = self.stem(x)
        taps, x_prev = [("stem", x)], x
        for i, cell in enumerate(self.cells):
            x_prev, x = x, cell(x, x_prev)
            taps.append((f"cells.{i}", x))
        return [*taps, ("final", self.final(x))]


default_cfgs = generate_default_cfgs({"cifar_nasnet_a": cifar_cfg(pool_size=(8, 8))})


@register_model
def cifar_nasnet_a(pretrained: bool = False, **kwargs: Any) -> CifarNASNetA:
    """NASNet-A (N=4) @ 1176 (F = 49): 5,313,170 parameters at 100 classes."""
    model_kwargs: dict[str, Any] = {"num_cells": 4, "num_conv_filters": 49, "stem_multiplier": 3, **kwargs}
    num_levels = model_kwargs.get("num_reductions", 2) + 1
    return create_cifar_model(CifarNASNetA, "cifar_nasnet_a", pretrained, num_levels=num_levels, **model_kwargs)
