"""Building blocks of SkipblockNet and an inference-time Conv+BatchNorm fusion.

The blocks are written for speed at small batches, where a MobileNet spends a noticeable share of
its time in Python rather than in kernels:

* every layer is a named attribute (state-dict keys read ``conv_pw``/``bn1``/``conv_dw``/... as in
  timm's MobileNetV3) and activations are PyTorch's fused built-ins, run in place;
* in eval mode, when no hook is registered on the block's layers (nor a global module hook), a
  block calls ``torch.conv2d``/``torch.batch_norm``/the activations directly with its layers'
  parameters instead of going through each layer's ``nn.Module.__call__`` and Python ``forward``:
  the same kernels and bit-identical outputs, without tens of microseconds of Python per block
  (a few per cent of SkipblockNet-M's CPU latency at batch 1; see :func:`conv_norm_act`).
  Training, TorchScript and any hooked layer take the ordinary module path;
* the squeeze-excite works on a ``(B, C, 1, 1)`` mean with 1x1 convolutions (no reshapes, in
  PyTorch or in an exported ONNX graph);
* the skip block pools with a plain integer-kernel average pool whenever the sizes divide (what
  adaptive pooling computes in that case, at a fraction of its cost).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _nn_module

__all__ = [
    "LayerFn",
    "hookless",
    "conv_norm_act",
    "SqueezeExcite",
    "InvertedResidual",
    "SkipBlock",
    "pool_to",
    "fuse_bn",
    "init_weights",
]

LayerFn = Callable[..., nn.Module]


def hookless(modules: Iterable[nn.Module]) -> bool:
    """True if none of ``modules`` has a forward/backward (pre-)hook and no global one is set.

    Then calling their ``forward`` directly, or the functional ops they wrap, is
    indistinguishable from calling the modules.
    """
    if (
        _nn_module._global_forward_hooks
        or _nn_module._global_forward_pre_hooks
        or _nn_module._global_backward_hooks
        or _nn_module._global_backward_pre_hooks
    ):
        return False
    for m in modules:
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return False
    return True


def conv_norm_act(
    x: torch.Tensor, conv: nn.Module, norm: Optional[nn.Module], act: Optional[nn.Module] = None
) -> torch.Tensor:
    """``act(norm(conv(x)))`` for eval mode without the modules' call overhead.

    Plain ``Conv2d``, running-stats ``BatchNorm2d``, ``Identity`` or ``None`` (a BatchNorm folded
    away by :func:`fuse_bn`, or none), ``ReLU``, ``Hardswish`` and ``Hardsigmoid`` (in place) run
    as the underlying ATen calls on the modules' parameters; anything else (a subclass, a
    parametrized layer, another norm) is called as a module. Parameters are read from the
    modules' ``_parameters``/``_buffers``, where ``torch.func.functional_call`` also puts its
    substitutes.
    """
    if type(conv) is nn.Conv2d and conv.padding_mode == "zeros":
        p = conv._parameters
        x = torch.conv2d(x, p["weight"], p["bias"], conv.stride, conv.padding, conv.dilation, conv.groups)
    else:
        x = conv(x)
    if norm is not None:
        t = type(norm)
        if t is nn.BatchNorm2d and norm.track_running_stats:
            p, b = norm._parameters, norm._buffers
            x = torch.batch_norm(
                x, p["weight"], p["bias"], b["running_mean"], b["running_var"],
                False, 0.0, norm.eps, torch.backends.cudnn.enabled,
            )
        elif t is not nn.Identity:
            x = norm(x)
    if act is not None:
        t = type(act)
        if t is nn.ReLU:
            x = torch.relu_(x)
        elif t is nn.Hardswish:
            x = torch._C._nn.hardswish_(x)
        elif t is nn.Hardsigmoid:
            x = torch._C._nn.hardsigmoid_(x)
        else:
            x = act(x)
    return x


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite of MobileNetV3: mean, 1x1 reduce, ReLU, 1x1 expand, hard-sigmoid gate.

    The authors use ``nn.Linear`` layers; a 1x1 convolution on the ``(B, C, 1, 1)`` mean computes
    the same thing (their weights load by a reshape) and exports to ONNX without reshapes.
    """

    def __init__(self, chs: int, rd_chs: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.gate(self.conv_expand(self.act(self.conv_reduce(s))))
        return x * s

    def forward_direct(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode forward without module call overhead (see :func:`conv_norm_act`)."""
        s = x.mean((2, 3), keepdim=True)
        s = conv_norm_act(s, self.conv_reduce, None, self.act)
        s = conv_norm_act(s, self.conv_expand, None, self.gate)
        return x * s if torch.is_grad_enabled() else x.mul_(s)


class InvertedResidual(nn.Module):
    """MobileNetV3 inverted residual: 1x1 expand, BN, act, kxk depthwise, BN, act, [SE], 1x1
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
        norm_layer: LayerFn,
    ) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn1 = norm_layer(mid_chs)
        self.act1 = act_layer(inplace=True)
        self.conv_dw = nn.Conv2d(
            mid_chs, mid_chs, kernel_size, stride, kernel_size // 2, groups=mid_chs, bias=False
        )
        self.bn2 = norm_layer(mid_chs)
        self.act2 = act_layer(inplace=True)
        self.se = SqueezeExcite(mid_chs, se_chs) if se_chs > 0 else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = norm_layer(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_block(x)

    def forward_block(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if not self.training and self._direct_ok():
                return self._forward_direct(x)
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(self.se(y)))
        if self.has_skip:
            y = y + x
        return y

    @torch.jit.unused
    def _direct_ok(self) -> bool:
        se = self.se
        return hookless(self._modules.values()) and (
            type(se) is nn.Identity or (type(se) is SqueezeExcite and hookless(se._modules.values()))
        )

    @torch.jit.unused
    def _forward_direct(self, x: torch.Tensor) -> torch.Tensor:
        y = conv_norm_act(x, self.conv_pw, self.bn1, self.act1)
        y = conv_norm_act(y, self.conv_dw, self.bn2, self.act2)
        if type(self.se) is SqueezeExcite:
            y = self.se.forward_direct(y)
        y = conv_norm_act(y, self.conv_pwl, self.bn3)
        if self.has_skip:
            y += x
        return y


def pool_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Average-pool ``x`` to the spatial size of ``ref``, exactly as ``adaptive_avg_pool2d``.

    When the sizes divide, adaptive pooling is a plain average pool with kernel = stride = the
    ratio; that path is several times faster on the CPU and exports to a single ONNX AveragePool.
    """
    h, w = ref.shape[-2], ref.shape[-1]
    in_h, in_w = x.shape[-2], x.shape[-1]
    if in_h == h and in_w == w:
        return x
    if in_h % h == 0 and in_w % w == 0:
        kernel = [in_h // h, in_w // w]
        return F.avg_pool2d(x, kernel, kernel)
    return F.adaptive_avg_pool2d(x, [h, w])


class SkipBlock(InvertedResidual):
    """The paper's skip block: pool an early feature map to the size of the tensor it joins, then
    an inverted residual without squeeze-excite (1x1 expand, BN, act, kxk depthwise, BN, act, 1x1
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
        norm_layer: LayerFn,
    ) -> None:
        super().__init__(in_chs, mid_chs, out_chs, kernel_size, 1, 0, act_layer, norm_layer)
        self.has_skip = False  # its output is added where it joins, not to its own input

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.forward_block(pool_to(x, ref))


def init_weights(module: nn.Module, linear_like: Iterable[nn.Module] = ()) -> None:
    """The authors' initialisation (that of MobileNetV3's reference code).

    Convolutions: N(0, sqrt(2 / (k_h * k_w * out_channels))); BatchNorm: weight 1, bias 0;
    Linear layers N(0, 0.01), bias 0. ``linear_like`` are modules that the authors implement as
    ``nn.Linear`` (the squeeze-excite 1x1 convolutions) and that are initialised as such.
    """
    linear_ids = {id(m) for m in linear_like}
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if id(m) in linear_ids:
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# Conv + BatchNorm fusion for inference
# ---------------------------------------------------------------------------------------------

_BN_TYPES = (nn.BatchNorm2d,)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        var = bn.running_var if bn.running_var is not None else torch.ones_like(bn.weight)
        mean = bn.running_mean if bn.running_mean is not None else torch.zeros_like(bn.weight)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(var)
        scale = gamma / torch.sqrt(var + bn.eps)
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
        fused.bias.copy_((bias - mean) * scale + beta)
    fused.weight.requires_grad_(conv.weight.requires_grad)
    fused.to(memory_format=_memory_format(conv.weight))
    return fused


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _foldable(conv: Optional[nn.Module], bn: Optional[nn.Module]) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) in _BN_TYPES
        and bn.track_running_stats  # type: ignore[union-attr]
        and conv.out_channels == bn.num_features  # type: ignore[union-attr]
    )


def fuse_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into that convolution.

    For inference only: the result computes the same function as ``model.eval()`` with fewer
    operations. Works in place and returns ``model`` (switched to eval mode). Two patterns are
    recognised, which covers this package's models and torchvision's/timm's convolution blocks:

    * a module that lists its ``(conv, bn)`` attribute pairs in ``fuse_pairs``;
    * ``nn.Sequential`` children where a ``Conv2d`` is immediately followed by a ``BatchNorm2d``.

    Each folded BatchNorm is replaced by ``nn.Identity``.
    """
    model.eval()
    for module in list(model.modules()):
        for conv_name, bn_name in getattr(module, "fuse_pairs", ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if _foldable(conv, bn):
                setattr(module, conv_name, _fold(conv, bn))  # type: ignore[arg-type]
                setattr(module, bn_name, nn.Identity())
        if isinstance(module, nn.Sequential):
            names = list(module._modules.keys())
            for a, b in zip(names[:-1], names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if _foldable(conv, bn):
                    module._modules[a] = _fold(conv, bn)  # type: ignore[arg-type]
                    module._modules[b] = nn.Identity()
    return model
