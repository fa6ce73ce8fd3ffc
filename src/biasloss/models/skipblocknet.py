"""SkipblockNet: MobileNetV3-Large with two skip blocks.

Paper: "Bias Loss for Mobile Neural Networks", Abrahamyan, Ziatchin, Chen, Deligiannis, ICCV 2021
(https://arxiv.org/abs/2107.11170), section 4 and Table 1.

A skip block carries the output of the first (base) inverted-residual block past stages of the
network: it average-pools it to the size of the stage output it joins, runs a small inverted
residual (1x1 expand, depthwise, 1x1 project) and adds the result. SkipblockNet-M reproduces the
authors' released model layer for layer (their checkpoint loads with
:func:`biasloss.models.load_official_weights`); XS, S and L are width multiples of it (see
``docs/skipblocknet.md`` for their parameters and MACs next to the paper's).

Unlike the authors' code, which hard-codes the pooled sizes (28 and 14) and the skip blocks' input
width, this implementation runs at any input size and any width; ``small_input=True`` removes two
of the five stride-2 steps for 28-64 px images (total stride 8).

The architecture is data: :data:`SKIPBLOCKNET_ARCH` lists every stage as rows, skip blocks
included, and :class:`SkipblockNet` is built from it.
"""

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import SelectAdaptivePool2d, make_divisible
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from biasloss.errors import InputError

from ._layers import InvertedResidual, LayerFn, NormActFn, SkipBlock, init_weights, norm_act_from
from .official import official_filter_fn
from .utils import take_indices

__all__ = [
    "BlockDef",
    "SkipblockNetCfg",
    "SKIPBLOCKNET_ARCH",
    "SKIPBLOCKNET_VARIANTS",
    "SkipblockNet",
    "SkipblockStage",
]


@dataclass(frozen=True)
class BlockDef:
    """One row of an architecture table.

    ``kind="ir"``: inverted residual with ``kernel_size``, expansion ``expand`` (hidden channels =
    make_divisible(in_chs * expand, 8)), ``out_chs`` (before the width multiplier), ``stride``,
    squeeze-excite ``se`` and activation ``act`` ("relu" or "hswish").

    ``kind="skip"``: skip block fed by the output of stage ``src``; its expansion is relative to
    that stage's width, its output width is that of the stage it ends (it is added there). A skip
    row is the last row of the stage whose output it joins.
    """

    kind: str
    kernel_size: int
    expand: float
    out_chs: int = 0
    stride: int = 1
    se: bool = False
    act: str = "relu"
    src: int = 0


def _ir(k: int, e: float, c: int, *, s: int = 1, se: bool = False, hs: bool = False) -> BlockDef:
    return BlockDef("ir", k, e, c, s, se, "hswish" if hs else "relu")


def _skip(k: int, e: float, *, src: int) -> BlockDef:
    return BlockDef("skip", k, e, src=src)


# SkipblockNet-M at width 1.0, the authors' model. Rows: _ir(kernel, expansion, out_chs, s=stride,
# se=squeeze-excite, hs=hard-swish (else ReLU)); _skip(kernel, expansion, src=source stage).
# Input sizes are for a 224 px image (small_input=True: stem stride 1 and the first stride-2 row
# of stage 1 at stride 1, so a 32 px image gives 32, 32, 16, 8, 8, 4).
SKIPBLOCKNET_ARCH: Tuple[Tuple[BlockDef, ...], ...] = (
    # stage 0, 112x112 in: the base block (expansion 1, 1x1 expand kept), feeds both skip blocks
    (_ir(3, 1, 16, hs=True),),
    # stage 1, 112x112 in
    (_ir(3, 4, 24, s=2), _ir(3, 3, 24)),
    # stage 2, 56x56 in; skip 1: stage 0 pooled 112 -> 28, added to this stage's output
    (
        _ir(5, 3, 40, s=2, se=True),
        _ir(5, 3, 40, se=True),
        _ir(5, 6, 40, se=True, hs=True),
        _skip(5, 6, src=0),
    ),
    # stage 3, 28x28 in; skip 2: stage 0 pooled 112 -> 14, added to this stage's output
    (
        _ir(3, 6, 80, s=2, hs=True),
        _ir(3, 2.5, 80, hs=True),
        _ir(3, 2.3, 80, hs=True),
        _ir(3, 2.3, 80, hs=True),
        _skip(3, 2.3, src=0),
    ),
    # stage 4, 14x14 in
    (_ir(3, 6, 112, se=True, hs=True), _ir(3, 6, 112, se=True, hs=True)),
    # stage 5, 14x14 in
    (
        _ir(5, 6, 160, s=2, se=True, hs=True),
        _ir(5, 6, 160, se=True, hs=True),
        _ir(5, 6, 160, se=True, hs=True),
    ),
)


@dataclass(frozen=True)
class SkipblockNetCfg:
    """A full network: stem width, stage table, head and width multiplier.

    Every width is multiplied by ``width`` and rounded with make_divisible(., 8): stem, blocks and
    skip blocks (their hidden width follows their scaled source). The pre-pool head convolution has
    ``head_expand`` x the last stage's width; the classifier's hidden layer has ``head_hidden``
    units, scaled only for widths above 1.0 (as in MobileNetV3 and the authors' code).
    """

    stages: Tuple[Tuple[BlockDef, ...], ...] = SKIPBLOCKNET_ARCH
    stem_chs: int = 16
    head_expand: float = 6.0
    head_hidden: int = 1280
    width: float = 1.0


# The variants of Table 1. The first author states that the family differs only in the width
# multiplier; no width reproduces both of XS's figures, so XS also uses the authors' smaller
# classifier head ("small" mode of their code, 1024 hidden units). Parameters and MACs next to the
# paper's: docs/skipblocknet.md.
SKIPBLOCKNET_VARIANTS: Dict[str, SkipblockNetCfg] = {
    "skipblocknet_xs": SkipblockNetCfg(width=0.5, head_hidden=1024),
    "skipblocknet_s": SkipblockNetCfg(width=0.7),
    "skipblocknet_m": SkipblockNetCfg(width=1.0),
    "skipblocknet_l": SkipblockNetCfg(width=1.15),
}

_ACT_LAYERS: Dict[str, LayerFn] = {"relu": nn.ReLU, "hswish": nn.Hardswish}


class SkipblockStage(nn.Module):
    """A run of inverted residuals, plus (optionally) a skip block added to its output.

    ``forward(x, feats)`` takes the outputs of the earlier stages; the skip block reads
    ``feats[skip_src]`` and pools it to this stage's output size.
    """

    def __init__(self, blocks: Sequence[nn.Module], skip: Optional[SkipBlock] = None, skip_src: int = -1) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.skip = skip
        self.skip_src = skip_src

    def forward(self, x: torch.Tensor, feats: List[torch.Tensor]) -> torch.Tensor:
        x = self.blocks(x)
        if self.skip is not None:
            x = x + self.skip(feats[self.skip_src], x)
        return x


def _build_stages(cfg: SkipblockNetCfg, in_chs: int, reduction: int, small_input: bool, norm_act: NormActFn,
                  chs: Callable[[float], int]) -> Tuple[List[nn.Module], List[int], List[int], List[int]]:
    """Turn the rows of ``cfg.stages`` into modules (see :class:`BlockDef`); per stage also its output
    channels, and its output stride as built and in the standard (224 px) layout."""
    stages: List[nn.Module] = []
    stage_chs: List[int] = []
    reductions: List[int] = []
    std_reductions: List[int] = []
    std_reduction = 2
    first_s2_pending = small_input  # small_input: the first stride-2 row runs at stride 1
    for stage_idx, rows in enumerate(cfg.stages):
        if not rows:
            raise InputError(f"stage {stage_idx} has no rows")
        blocks: List[nn.Module] = []
        skip: Optional[SkipBlock] = None
        skip_src = -1
        for row_idx, row in enumerate(rows):
            if row.act not in _ACT_LAYERS:
                raise InputError(f"unknown activation {row.act!r} (stage {stage_idx})")
            if row.kind == "ir":
                if skip is not None:
                    raise InputError(f"stage {stage_idx}: a skip row must be the last row")
                if row.stride not in (1, 2):
                    raise InputError(f"stride must be 1 or 2, got {row.stride}")
                stride = row.stride
                std_reduction *= stride
                if stride == 2 and first_s2_pending:
                    stride, first_s2_pending = 1, False
                out_chs = chs(row.out_chs)
                mid_chs = int(make_divisible(in_chs * row.expand, 8))
                se_chs = int(make_divisible(mid_chs / 4, 8)) if row.se else 0
                blocks.append(InvertedResidual(
                    in_chs, mid_chs, out_chs, row.kernel_size, stride, se_chs, _ACT_LAYERS[row.act], norm_act
                ))
                in_chs, reduction = out_chs, reduction * stride
            elif row.kind == "skip":
                if row_idx == 0:
                    raise InputError(f"stage {stage_idx}: a skip row needs blocks before it")
                if skip is not None:
                    raise InputError(f"stage {stage_idx}: only one skip row per stage")
                if not 0 <= row.src < stage_idx:
                    raise InputError(f"stage {stage_idx}: skip source must be an earlier stage, got {row.src}")
                src_chs = stage_chs[row.src]
                mid_chs = int(make_divisible(src_chs * row.expand, 8))
                skip = SkipBlock(src_chs, mid_chs, in_chs, row.kernel_size, _ACT_LAYERS[row.act], norm_act)
                skip_src = row.src
            else:
                raise InputError(f"unknown row kind {row.kind!r} (stage {stage_idx})")
        stages.append(SkipblockStage(blocks, skip, skip_src))
        stage_chs.append(in_chs)
        reductions.append(reduction)
        std_reductions.append(std_reduction)
    return stages, stage_chs, reductions, std_reductions


_POOL_TYPES = ("", "avg", "max", "avgmax")


def _global_pool(pool_type: str) -> SelectAdaptivePool2d:
    """timm's pooling; ``""`` is no pooling and no flattening (timm's convention)."""
    if pool_type not in _POOL_TYPES:
        raise InputError(f"global_pool must be one of {_POOL_TYPES}, got {pool_type!r}")
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))


class SkipblockNet(nn.Module):
    """SkipblockNet (timm model contract).

    ``forward_features(x)`` returns the pre-pool head feature map (960 channels for M; the
    features the Bias Loss uses), ``forward_head`` pools and classifies. State-dict keys:
    ``conv_stem``, ``bn1``, ``stages.{i}.blocks.{j}.{conv_pw,bn1,conv_dw,bn2,se,conv_pwl,bn3}``,
    ``stages.{i}.skip.*``, ``conv_head``, ``bn2``, ``head_fc``, ``classifier``. A BatchNorm
    followed by an activation is one :class:`~biasloss.models._layers.BatchNormAct2d` (``bn1``,
    ``bn2``; the activation is its ``act``).

    Args:
        cfg: architecture (default: SkipblockNet-M).
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pre-logits).
        in_chans: input channels (1 for grayscale).
        small_input: stride 8 in total instead of 32, for 28-64 px images.
        drop_rate: dropout before the classifier.
        bn_momentum, bn_eps: BatchNorm settings (PyTorch convention; the paper's ImageNet recipe
            uses momentum 0.01); ignored if ``norm_layer`` is given.
        norm_layer: another norm, ``norm_layer(num_features)``; it is followed by a separate
            activation (``nn.Sequential``: keys ``bn1.0.*``).
        global_pool: pooling type of timm's SelectAdaptivePool2d: "avg", "max", "avgmax", or ""
            for none (``forward`` then returns a ``(B, C, H, W)`` map, see :meth:`forward_head`).
    """

    fuse_pairs = (("conv_stem", "bn1"), ("conv_head", "bn2"))

    def __init__(
        self,
        cfg: Optional[SkipblockNetCfg] = None,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        width: Optional[float] = None,
        drop_rate: float = 0.2,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        norm_layer: Optional[LayerFn] = None,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else SkipblockNetCfg()
        if width is not None:
            cfg = replace(cfg, width=width)
        if cfg.width <= 0:
            raise InputError(f"width must be positive, got {cfg.width}")
        if num_classes < 0 or in_chans < 1:
            raise InputError(f"need num_classes >= 0 and in_chans >= 1, got {num_classes}, {in_chans}")
        self.global_pool = _global_pool(global_pool)
        if not 0.0 <= drop_rate < 1.0:
            raise InputError(f"drop_rate must be in [0, 1), got {drop_rate}")
        norm_act = norm_act_from(norm_layer, eps=bn_eps, momentum=bn_momentum)
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.small_input = small_input
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        def chs(c: float) -> int:
            return int(make_divisible(c * cfg.width, 8))

        # stem
        stem_chs = chs(cfg.stem_chs)
        stem_stride = 1 if small_input else 2
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, stem_stride, 1, bias=False)
        self.bn1 = norm_act(stem_chs, nn.Hardswish)

        # stages, from the table
        stages, stage_chs, reductions, std = _build_stages(cfg, stem_chs, stem_stride, small_input, norm_act, chs)
        self.stages = nn.ModuleList(stages)
        in_chs = stage_chs[-1]

        # pre-pool head: the features of the Bias Loss
        self.num_features = int(make_divisible(in_chs * cfg.head_expand, 8))
        self.conv_head = nn.Conv2d(in_chs, self.num_features, 1, bias=False)
        self.bn2 = norm_act(self.num_features, nn.Hardswish)

        # classifier: pool, Linear, hard-swish, dropout, Linear
        hidden = cfg.head_hidden
        self.head_hidden_size = int(make_divisible(hidden * cfg.width, 8)) if cfg.width > 1.0 else hidden
        self.head_fc = nn.Linear(self.num_features, self.head_hidden_size)
        self.head_act = nn.Hardswish()
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

        # feature taps: the last stage at each stride of the standard (224 px) layout, then the
        # head convolution; the same five taps with small_input, at its smaller reductions
        taps = [i for i in range(len(std) - 1) if std[i + 1] != std[i]]
        self._feature_stages: List[int] = taps
        self.feature_info = [
            dict(num_chs=stage_chs[i], reduction=reductions[i], module=f"stages.{i}") for i in taps
        ] + [dict(num_chs=self.num_features, reduction=reductions[-1], module="bn2")]

        init_weights(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups in forward order, for timm's layer-wise learning-rate decay."""
        if coarse:
            blocks = [(r"^stages\.(\d+)", None)]
        else:  # a skip block runs after the blocks of the stage it joins
            blocks = [(r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^stages\.(\d+)\.skip", (99999,))]
        return dict(stem=r"^conv_stem|^bn1", blocks=blocks + [(r"^conv_head|^bn2", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the final Linear layer (``num_classes=0``: none, ``forward`` gives pre-logits)
        and, if given, the pooling (``""``: none, ``forward`` gives a map; see :meth:`forward_head`)."""
        if num_classes < 0:
            raise InputError(f"num_classes must be >= 0, got {num_classes}")
        if global_pool is not None:
            self.global_pool = _global_pool(global_pool)
        self.num_classes = num_classes
        device = self.head_fc.weight.device if isinstance(self.head_fc, nn.Linear) else None
        if num_classes > 0:
            self.classifier = nn.Linear(self.head_hidden_size, num_classes, device=device)
            init_weights(self.classifier)
        else:
            self.classifier = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> pre-pool feature map ``(B, num_features, H/32, W/32)`` (H/8 with small_input)."""
        x = self.bn1(self.conv_stem(x))
        feats: List[torch.Tensor] = []
        for stage in self.stages:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(stage, x, feats, use_reentrant=False)
            else:
                x = stage(x, feats)
            feats.append(x)
        return self.bn2(self.conv_head(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, hidden layer, hard-swish, dropout, classifier.

        With pooling off (``global_pool=""``) the hidden layer and the classifier apply at every
        position, as timm's MobileNetV3 head does: ``(B, head_hidden_size or num_classes, H, W)``.
        """
        x = self.global_pool(x)
        dense = self.global_pool.is_identity()
        if dense:
            x = x.movedim(1, -1)  # (B, H, W, C): the Linear layers act on the channels
        x = self.head_act(self.head_fc(x))
        if not pre_logits:
            x = self.classifier(self.head_drop(x))
        if dense:
            x = x.movedim(-1, 1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns the feature maps listed in ``feature_info``.

        Args:
            indices: take the last n taps if int, all if None, else these tap indices.
            norm: unused (no final norm layer); kept for the timm signature.
            stop_early: stop after the last requested tap (``intermediates_only`` only).
            output_fmt: only "NCHW".
            intermediates_only: return only the list of intermediates.
        """
        if output_fmt != "NCHW":
            raise InputError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        if stop_early and not intermediates_only:
            raise InputError("stop_early requires intermediates_only=True")
        num_taps = len(self._feature_stages) + 1
        taken, max_index = take_indices(num_taps, indices)
        take_stages = [self._feature_stages[i] for i in taken if i < num_taps - 1]
        take_head = (num_taps - 1) in taken
        last_stage = len(self.stages) - 1
        if stop_early and max_index < num_taps - 1:
            last_stage = self._feature_stages[max_index]

        intermediates: List[torch.Tensor] = []
        x = self.bn1(self.conv_stem(x))
        feats: List[torch.Tensor] = []
        for i, stage in enumerate(self.stages[:last_stage + 1]):
            x = stage(x, feats)
            feats.append(x)
            if i in take_stages:
                intermediates.append(x)
        if stop_early and not take_head:
            return intermediates
        if isinstance(self.conv_head, nn.Identity) and take_head:
            raise InputError("the head convolution was pruned; its features cannot be taken")
        x = self.bn2(self.conv_head(x))
        if take_head:
            intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the layers that the requested feature taps do not need (timm's features_only)."""
        num_taps = len(self._feature_stages) + 1
        taken, max_index = take_indices(num_taps, indices)
        if max_index < num_taps - 1:
            keep = self._feature_stages[max_index] + 1
            self.stages = self.stages[:keep]
            self.num_features = self.feature_info[max_index]["num_chs"]
            self.conv_head, self.bn2 = nn.Identity(), nn.Identity()
            prune_head = True
        if prune_head:
            self.head_fc, self.head_act = nn.Identity(), nn.Identity()
            self.head_hidden_size = self.num_features
            self.reset_classifier(0)
        return taken


def _normalisation(chans: int) -> dict[str, tuple[float, ...]]:
    """ImageNet's mean and std for ``chans`` input channels, so that timm's ``create_transform``
    normalises what the model takes: one channel gets the mean of the three (a grey image), other
    counts repeat them."""
    mean, std = _cfg()["mean"], _cfg()["std"]
    if chans == 1:
        return {"mean": (sum(mean) / 3,), "std": (sum(std) / 3,)}
    return {"mean": tuple(mean[i % 3] for i in range(chans)), "std": tuple(std[i % 3] for i in range(chans))}


def _cfg() -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "conv_stem",
        "classifier": "classifier",
        "paper_ids": "arXiv:2107.11170",
        "paper_name": "Bias Loss for Mobile Neural Networks",
        "license": "apache-2.0",
    }


# No weights can be downloaded: the authors' SkipblockNet-M file loads with
# load_official_weights(model, "skipblocknet-m.pth") or, through timm,
# timm.create_model("skipblocknet_m", pretrained=True, pretrained_cfg_overlay=dict(file=...)).
default_cfgs = generate_default_cfgs({name: _cfg() for name in SKIPBLOCKNET_VARIANTS})


def _entry_point(variant: str, doc: str) -> Callable[..., SkipblockNet]:
    """Register the timm entry point ``variant(pretrained=False, *, num_classes=1000, in_chans=3,
    small_input=False, **kwargs)``: the keyword arguments of SkipblockNet (drop_rate, bn_momentum,
    width, ...) or timm's (features_only, out_indices, pretrained_cfg_overlay, ...)."""

    def entry(
        pretrained: bool = False, *, num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
        **kwargs: Any,
    ) -> SkipblockNet:
        # the cfg describes the model as built: its channels, and for small_input a CIFAR-size
        # default input (32 px, pooled from 4x4) instead of ImageNet's 224 px (pooled from 7x7)
        size, pool = (32, 4) if small_input else (224, 7)
        overlay = dict(input_size=(in_chans, size, size), pool_size=(pool, pool), **_normalisation(in_chans))
        overlay.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
        kwargs.update(num_classes=num_classes, in_chans=in_chans, small_input=small_input)
        return build_model_with_cfg(
            SkipblockNet,
            variant,
            pretrained,
            model_cfg=SKIPBLOCKNET_VARIANTS[variant],
            feature_cfg=dict(feature_cls="getter"),
            pretrained_filter_fn=official_filter_fn,  # the authors' checkpoint, by file
            pretrained_cfg_overlay=overlay,
            **kwargs,
        )

    entry.__name__ = entry.__qualname__ = variant
    entry.__doc__ = doc
    return register_model(entry)


skipblocknet_xs = _entry_point(
    "skipblocknet_xs", "SkipblockNet-XS: width 0.5, classifier hidden 1024 (paper: 81M MACs, 2.3M params)."
)
skipblocknet_s = _entry_point("skipblocknet_s", "SkipblockNet-S: width 0.7 (paper: 152M MACs, 3.6M params).")
skipblocknet_m = _entry_point(
    "skipblocknet_m", "SkipblockNet-M: the authors' model, width 1.0 (paper: 246M MACs, 5.5M params)."
)
skipblocknet_l = _entry_point("skipblocknet_l", "SkipblockNet-L: width 1.15 (paper: 364M MACs, 7.1M params).")
