"""Building blocks of SkipblockNet and an inference-time Conv+BatchNorm fusion.

Each block has one plain forward made of PyTorch modules and functions, so that every PyTorch tool
can take the models apart: hooks, ``torch.fx`` (and what is built on it: torchvision's
``create_feature_extractor``, FX quantization), ``torch.compile(fullgraph=True)``,
``torch.export`` and TorchScript. No operation works in place on a tensor that a module returned
(a BatchNorm's activation works in place inside :class:`BatchNormAct2d`), so a forward hook sees
exactly the tensor its module returned, with or without gradients.
Inference speed comes from :func:`fuse_bn`, export and compilation, not from a second forward.

Every layer is a named attribute (state-dict keys read ``conv_pw``/``bn1``/``conv_dw``/... as in
timm's MobileNetV3).
"""

import copy
import math
from typing import Any, Callable, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from biasloss.errors import InputError

from .utils import BATCHNORMS

__all__ = [
    "LayerFn",
    "NormActFn",
    "BatchNormAct2d",
    "Conv2dAct",
    "norm_act_from",
    "SqueezeExcite",
    "InvertedResidual",
    "SkipBlock",
    "pool_to",
    "fuse_bn",
    "init_weights",
]

LayerFn = Callable[..., nn.Module]
#: ``norm_act(num_features, act_layer)``: a norm followed by ``act_layer()`` (``None``: no act)
NormActFn = Callable[[int, Optional[LayerFn]], nn.Module]


class BatchNormAct2d(nn.BatchNorm2d):
    """``act(batch_norm(x))`` in one module, with exactly ``nn.BatchNorm2d``'s state dict.

    The activation (``self.act``, a module that can be hooked) works in place on the BatchNorm's
    result, a tensor that exists only inside this forward, so no hook sees a tensor change after
    its module returned it (separate out-of-place activations made SkipblockNet-M 15-20 % slower at
    batch 1 on the CPU). Written here rather than taken from ``timm.layers.BatchNormAct2d``
    (same keys, same numbers, same speed in ``benchmarks/bench_latency.py``) because timm's runs
    the activation on the output of a pass-through ``drop`` module, whose hooks would see that
    output change. Running statistics are always tracked with an exponential average.
    """

    def __init__(self, num_features: int, act_layer: LayerFn, eps: float = 1e-5, momentum: float = 0.1) -> None:
        if momentum is None or not 0.0 <= momentum <= 1.0:
            raise InputError(f"momentum must be a number in [0, 1], got {momentum!r}")
        super().__init__(num_features, eps=eps, momentum=float(momentum))
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count, momentum = self.num_batches_tracked, self.momentum  # locals: TorchScript's Optional
        if self.training and count is not None:
            count.add_(1)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, momentum if momentum is not None else 0.0, self.eps)
        return self.act(x)


def norm_act_from(norm_layer: Optional[LayerFn] = None, **bn_kwargs: Any) -> NormActFn:
    """The blocks' ``norm_act`` factory: :class:`BatchNormAct2d` with ``bn_kwargs`` (eps, momentum), a plain
    ``nn.BatchNorm2d`` where no activation follows, or for another ``norm_layer(num_features)``
    that layer followed by the activation (``nn.Sequential``, keys ``bn1.0.*``)."""
    def norm_act(num_features: int, act_layer: Optional[LayerFn] = None) -> nn.Module:
        if norm_layer is None:
            if act_layer is None:
                return nn.BatchNorm2d(num_features, **bn_kwargs)
            return BatchNormAct2d(num_features, act_layer, **bn_kwargs)
        norm = norm_layer(num_features)
        return nn.Sequential(norm, act_layer()) if act_layer is not None else norm

    return norm_act


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite of MobileNetV3: mean, 1x1 reduce, ReLU, 1x1 expand, hard-sigmoid gate.

    The authors use ``nn.Linear`` layers; a 1x1 convolution on the ``(B, C, 1, 1)`` mean computes
    the same thing (their weights load by a reshape) and exports to ONNX without reshapes.
    """

    def __init__(self, chs: int, rd_chs: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act = nn.ReLU()
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.gate(self.conv_expand(self.act(self.conv_reduce(s))))
        return x * s


class InvertedResidual(nn.Module):
    """MobileNetV3 inverted residual: 1x1 expand, BN+act, kxk depthwise, BN+act, [SE], 1x1
    project, BN, plus the identity when stride is 1 and the width is unchanged.

    The 1x1 expansion is always present, even at expansion ratio 1 (the authors' base block).
    """

    fuse_pairs = (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int,
        se_chs: int,
        act_layer: LayerFn,
        norm_act: NormActFn,
    ) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn1 = norm_act(mid_chs, act_layer)
        self.conv_dw = nn.Conv2d(mid_chs, mid_chs, kernel_size, stride, kernel_size // 2, groups=mid_chs, bias=False)
        self.bn2 = norm_act(mid_chs, act_layer)
        self.se = SqueezeExcite(mid_chs, se_chs) if se_chs > 0 else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = norm_act(out_chs, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_block(x)

    def forward_block(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv_pw(x))
        y = self.bn2(self.conv_dw(y))
        y = self.bn3(self.conv_pwl(self.se(y)))
        if self.has_skip:
            y = y + x
        return y


def pool_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Average-pool ``x`` to the spatial size of ``ref``, exactly as ``adaptive_avg_pool2d``.

    When the sizes divide, adaptive pooling is a plain average pool with kernel = stride = the
    ratio; that path is several times faster on the CPU and exports to a single ONNX AveragePool.
    The choice depends on the input's shape, so ``torch.fx`` records this function as one call
    (:func:`torch.fx.wrap`) instead of tracing into it; ``torch.compile`` and ``torch.export``
    trace through it with the shapes they see.
    """
    h, w = ref.shape[-2], ref.shape[-1]
    in_h, in_w = x.shape[-2], x.shape[-1]
    if in_h == h and in_w == w:
        return x
    if in_h % h == 0 and in_w % w == 0:
        kernel = [in_h // h, in_w // w]
        return F.avg_pool2d(x, kernel, kernel)
    return F.adaptive_avg_pool2d(x, [h, w])


torch.fx.wrap("pool_to")


class SkipBlock(InvertedResidual):
    """The paper's skip block: pool an early feature map to the size of the tensor it joins, then
    an inverted residual without squeeze-excite (1x1 expand, BN+act, kxk depthwise, BN+act, 1x1
    project, BN; the authors use ReLU).

    ``forward(x, ref)`` returns the term that is added to ``ref``; pooling to ``ref``'s size (not a
    fixed 28 or 14 as in the authors' model) is what lets the network run at any resolution.
    """

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        kernel_size: int,
        act_layer: LayerFn,
        norm_act: NormActFn,
    ) -> None:
        super().__init__(in_chs, mid_chs, out_chs, kernel_size, 1, 0, act_layer, norm_act)
        self.has_skip = False  # its output is added where it joins, not to its own input

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.forward_block(pool_to(x, ref))


def init_weights(module: nn.Module) -> None:
    """The authors' initialisation (that of MobileNetV3's reference code).

    Convolutions: N(0, sqrt(2 / (k_h * k_w * out_channels))); BatchNorm: weight 1, bias 0;
    Linear layers N(0, 0.01), bias 0, and so are the squeeze-excite 1x1 convolutions (``nn.Linear``
    layers in the authors' code).
    """
    se_convs = [(se.conv_reduce, se.conv_expand) for se in module.modules() if isinstance(se, SqueezeExcite)]
    linear_ids = {id(conv) for pair in se_convs for conv in pair}
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if id(m) in linear_ids:
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, BATCHNORMS):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


_BN_TYPES = (nn.BatchNorm2d, BatchNormAct2d)


class Conv2dAct(nn.Conv2d):
    """A convolution and an activation applied in place to its fresh result: what :func:`fuse_bn`
    makes of a convolution followed by a :class:`BatchNormAct2d` (keys: the convolution's)."""

    def __init__(self, *args: Any, act: nn.Module, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.conv2d rather than super().forward, which TorchScript cannot compile (zero padding only)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.act(y)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``conv`` with ``bn`` folded in (torch's ``fuse_conv_bn_eval``); a :class:`Conv2dAct` when
    ``bn`` carries an activation."""
    folded = fuse_conv_bn_eval(conv.eval(), bn.eval())
    act = bn.act if isinstance(bn, BatchNormAct2d) and not isinstance(bn.act, nn.Identity) else None
    if act is None:
        return folded
    fused = Conv2dAct(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype, act=copy.deepcopy(act))
    fused.weight, fused.bias = folded.weight, folded.bias
    return fused


def _foldable(conv: Optional[nn.Module], bn: Optional[nn.Module]) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) in _BN_TYPES
        and bn.track_running_stats  # type: ignore[union-attr]
        and conv.out_channels == bn.num_features  # type: ignore[union-attr]
        and (type(bn) is not BatchNormAct2d or conv.padding_mode == "zeros")  # see Conv2dAct
    )


def fuse_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into that convolution.

    For inference only: the result computes the same function as ``model.eval()`` with fewer
    operations. Works in place and returns ``model`` (switched to eval mode). Two patterns are
    recognised, which covers this package's models and torchvision's/timm's convolution blocks:

    * a module that lists its ``(conv, bn)`` attribute pairs in ``fuse_pairs``;
    * ``nn.Sequential`` children where a ``Conv2d`` is immediately followed by a ``BatchNorm2d``.

    Each folded BatchNorm is replaced by ``nn.Identity``; the activation of a
    :class:`BatchNormAct2d` moves into the convolution (:class:`Conv2dAct`).
    """
    model.eval()
    for module in list(model.modules()):
        for conv_name, bn_name in getattr(module, "fuse_pairs", ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if _foldable(conv, bn):
                setattr(module, conv_name, _fold(conv, bn))  # type: ignore[arg-type]
                setattr(module, bn_name, nn.Identity())
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, bn = module[i], module[i + 1]
                if _foldable(conv, bn):
                    module[i] = _fold(conv, bn)
                    module[i + 1] = nn.Identity()
    return model
