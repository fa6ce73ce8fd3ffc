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

from typing import Any, Dict, List, Mapping, Tuple

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
_OUR_STAGES = (2, 3, 4, 2, 3)  # stages 1..5; stage 0 is the base block
_SKIP_STAGES = {"skip1": 2, "skip2": 3}
_CONV = ("weight",)
_LINEAR = ("weight", "bias")
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _pairs(theirs: str, ours: str, layers: List[Tuple[str, str, Tuple[str, ...]]]) -> List[Tuple[str, str]]:
    """``(their key, our key)`` of each ``(their layer, our layer, parameter names)`` under the prefixes."""
    return [(f"{theirs}{t}.{p}", f"{ours}{o}.{p}") for t, o, params in layers for p in params]


def _block(theirs: str, ours: str, se: bool, project: int = 7) -> List[Tuple[str, str]]:
    """An inverted residual (``project=6``: a skip block, which has no squeeze-excite slot)."""
    layers = [("0", "conv_pw", _CONV), ("1", "bn1", _BN), ("3", "conv_dw", _CONV), ("4", "bn2", _BN)]
    if se:
        layers += [("6.fc.0", "se.conv_reduce", _LINEAR), ("6.fc.2", "se.conv_expand", _LINEAR)]
    layers += [(str(project), "conv_pwl", _CONV), (str(project + 1), "bn3", _BN)]
    return _pairs(theirs, ours, layers)


def official_key_map() -> Dict[str, str]:
    """``{their key: our key}`` for every key of the authors' SkipblockNet-M checkpoint, in their order."""
    pairs = _pairs("first_layer.", "", [("0", "conv_stem", _CONV), ("1", "bn1", _BN)])
    pairs += _block("base_block.conv.", "stages.0.blocks.0.", se=False)
    ours = iter(f"stages.{stage}.blocks.{i}." for stage, n in enumerate(_OUR_STAGES, start=1) for i in range(n))
    for group, se_flags in enumerate(_THEIR_SE):
        for idx, se in enumerate(se_flags):
            pairs += _block(f"blocks.{group}.{idx}.conv.", next(ours), se)
    for skip, stage in _SKIP_STAGES.items():
        pairs += _block(f"{skip}.core_block.", f"stages.{stage}.skip.", se=False, project=6)
    pairs += _pairs("", "", [("conv.0", "conv_head", _CONV), ("conv.1", "bn2", _BN),
                             ("classifier.0", "head_fc", _LINEAR), ("classifier.3", "classifier", _LINEAR)])
    return dict(pairs)


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


def official_filter_fn(state_dict: Mapping[str, Any], model: nn.Module | None = None) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: the (unwrapped) state dict, the authors' keys converted.

    Lets ``timm.create_model("skipblocknet_m", pretrained=True,
    pretrained_cfg_overlay=dict(file="skipblocknet-m.pth"))`` load their file.
    """
    sd = unwrap_state_dict(state_dict)
    if "first_layer.0.weight" in sd:
        return convert_official_state_dict(sd)
    return sd

