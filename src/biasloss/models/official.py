"""The format of the authors' released SkipblockNet-M checkpoint (``skipblocknet-m.pth``).

Their file is a plain state dict with their module names (``first_layer``, ``base_block.conv``,
``blocks.{0..3}.{i}.conv``, ``skip1/skip2.core_block``, ``conv``, ``classifier.{0,3}``) and the
squeeze-excite as ``nn.Linear`` layers. :func:`convert_official_state_dict` renames every key to
ours and reshapes the squeeze-excite weights to the 1x1 convolutions we use. This module knows
their layout as data and imports no model; :mod:`.pretrained` loads the result into a
SkipblockNet (``load_official_weights``) and converts a model back (``to_official_state_dict``).

Their layout, as positions in each ``nn.Sequential`` (``conv.N`` / ``core_block.N``):
0 1x1 expand, 1 BN, 2 act, 3 depthwise, 4 BN, 5 act, 6 squeeze-excite or identity (skip blocks:
no 6), 7 (skip blocks: 6) 1x1 project, 8 (7) BN.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping

import torch
from torch import nn

from biasloss.errors import InputError, InputTypeError

__all__ = [
    "official_key_map",
    "convert_official_state_dict",
    "official_filter_fn",
    "is_se_weight",
    "key_examples",
    "unwrap_state_dict",
]

# Inverted residuals after the base block, in the authors' grouping (their blocks.0..3) and in
# ours (stages 1..5); both list the same 14 blocks in the same order. Per block of theirs: whether
# it has a squeeze-excite (conv.6; an identity, without weights, otherwise).
_THEIR_SE = (
    (False, False, True, True, True),  # blocks.0: our stages 1 and 2
    (False, False, False, False),  # blocks.1: stage 3
    (True, True),  # blocks.2: stage 4
    (True, True, True),  # blocks.3: stage 5
)
_THEIR_GROUPS = tuple(len(group) for group in _THEIR_SE)
_OUR_STAGES = (2, 3, 4, 2, 3)  # stages 1..5; stage 0 is the base block
_OUR_BLOCKS = [f"stages.{stage}.blocks.{i}" for stage, n in enumerate(_OUR_STAGES, start=1) for i in range(n)]

_IR_LAYERS = {"0": "conv_pw", "1": "bn1", "3": "conv_dw", "4": "bn2", "7": "conv_pwl", "8": "bn3"}
_SKIP_LAYERS = {"0": "conv_pw", "1": "bn1", "3": "conv_dw", "4": "bn2", "6": "conv_pwl", "7": "bn3"}
_SE_LAYERS = {"0": "conv_reduce", "2": "conv_expand"}
_SKIP_STAGES = {"skip1": 2, "skip2": 3}
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

_IR_RE = re.compile(r"^(?:base_block|blocks\.(\d+)\.(\d+))\.conv\.(\d+)\.(.+)$")
_SKIP_RE = re.compile(r"^(skip[12])\.core_block\.(\d+)\.(.+)$")


def _our_block(group: int, idx: int) -> str:
    if not (0 <= group < len(_THEIR_GROUPS) and 0 <= idx < _THEIR_GROUPS[group]):
        raise KeyError
    return _OUR_BLOCKS[sum(_THEIR_GROUPS[:group]) + idx]


def _rename(key: str) -> str:
    """One of the authors' keys -> ours; KeyError if it is not one of theirs."""
    head = {"first_layer.0.": "conv_stem.", "first_layer.1.": "bn1.", "conv.0.": "conv_head.",
            "conv.1.": "bn2.", "classifier.0.": "head_fc.", "classifier.3.": "classifier."}
    for theirs, ours in head.items():
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    m = _IR_RE.match(key)
    if m:
        group, idx, layer, rest = m.groups()
        block = "stages.0.blocks.0" if group is None else _our_block(int(group), int(idx))
        if layer == "6":
            se = re.fullmatch(r"fc\.(\d)\.(weight|bias)", rest)
            if se is None or se.group(1) not in _SE_LAYERS:
                raise KeyError(key)
            return f"{block}.se.{_SE_LAYERS[se.group(1)]}.{se.group(2)}"
        return f"{block}.{_IR_LAYERS[layer]}.{rest}"
    m = _SKIP_RE.match(key)
    if m:
        skip, layer, rest = m.groups()
        return f"stages.{_SKIP_STAGES[skip]}.skip.{_SKIP_LAYERS[layer]}.{rest}"
    raise KeyError(key)


def _official_keys() -> List[str]:
    """Every key of the authors' SkipblockNet-M state dict, in their order."""

    def conv_bn(prefix: str, conv: str, bn: str) -> List[str]:
        return [f"{prefix}.{conv}.weight"] + [f"{prefix}.{bn}.{s}" for s in _BN_SUFFIXES]

    def block(prefix: str, se: bool) -> List[str]:
        keys = conv_bn(prefix, "0", "1") + conv_bn(prefix, "3", "4")
        if se:
            keys += [f"{prefix}.6.fc.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
        return keys + conv_bn(prefix, "7", "8")

    keys = conv_bn("first_layer", "0", "1") + block("base_block.conv", se=False)
    for group, se_flags in enumerate(_THEIR_SE):
        for idx, se in enumerate(se_flags):
            keys += block(f"blocks.{group}.{idx}.conv", se=se)
    for skip in _SKIP_STAGES:
        keys += conv_bn(f"{skip}.core_block", "0", "1") + conv_bn(f"{skip}.core_block", "3", "4")
        keys += conv_bn(f"{skip}.core_block", "6", "7")
    keys += conv_bn("conv", "0", "1")
    keys += [f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")]
    return keys


def official_key_map() -> Dict[str, str]:
    """``{their key: our key}`` for every key of the authors' SkipblockNet-M checkpoint."""
    return {k: _rename(k) for k in _official_keys()}


def is_se_weight(our_key: str) -> bool:
    """Whether ``our_key`` is a squeeze-excite weight: a 1x1 convolution here, a Linear in their file."""
    return ".se.conv_" in our_key and our_key.endswith(".weight")


def unwrap_state_dict(state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Accept a state dict, or a training checkpoint holding one; strip DataParallel prefixes."""
    for wrapper in ("state_dict", "model", "state_dict_ema", "model_ema"):
        inner = state_dict.get(wrapper) if isinstance(state_dict, Mapping) else None
        if isinstance(inner, Mapping):
            state_dict = inner
            break
    if not isinstance(state_dict, Mapping):
        raise InputTypeError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    out = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise InputTypeError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def key_examples(keys: List[str], n: int = 3) -> str:
    """The first ``n`` of ``keys``, quoted, and how many more (for one-line messages)."""
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def convert_official_state_dict(state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Rename the authors' SkipblockNet-M keys to ours and reshape the squeeze-excite weights.

    Raises ValueError, naming the offending keys, if the input is not exactly the authors'
    key set.
    """
    sd = unwrap_state_dict(state_dict)
    expected = official_key_map()
    unknown = [k for k in sd if k not in expected]
    missing = [k for k in expected if k not in sd]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} unrecognised keys ({key_examples(unknown)})")
        if missing:
            parts.append(f"{len(missing)} of its keys missing ({key_examples(missing)})")
        raise InputError(
            "not the authors' SkipblockNet-M checkpoint (skipblocknet-m.pth): "
            + "; ".join(parts)
            + ". A checkpoint saved from a biasloss model loads with model.load_state_dict()."
        )
    out: Dict[str, torch.Tensor] = {}
    for theirs, ours in expected.items():
        v = sd[theirs]
        if is_se_weight(ours):
            if v.dim() != 2:
                raise InputError(f"{theirs!r}: expected a Linear weight (2-D), got shape {tuple(v.shape)}")
            v = v.reshape(v.shape[0], v.shape[1], 1, 1)
        out[ours] = v
    return out


def official_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: convert the authors' keys, pass our own checkpoints through.

    Lets ``timm.create_model("skipblocknet_m", pretrained=True,
    pretrained_cfg_overlay=dict(file="skipblocknet-m.pth"))`` load their file.
    """
    sd = unwrap_state_dict(state_dict)
    if "first_layer.0.weight" in sd:
        return convert_official_state_dict(sd)
    return sd

