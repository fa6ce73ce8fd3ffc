"""Start a model from trained weights for fine-tuning (transfer learning, paper section 5.3).

The paper fine-tunes ImageNet-trained SkipblockNets, every weight, on Food-101. Here the weights
can come from

* a checkpoint written by ``biasloss train`` (the weights it evaluated: the EMA's when the recipe
  keeps one, as in the ImageNet recipe);
* the authors' released SkipblockNet-M file (their key names are converted);
* any plain state dict of the same architecture (timm, torchvision or your own), also wrapped as
  ``{"state_dict": ...}`` / ``{"model": ...}``, with DataParallel's ``module.`` prefixes.

What cannot fit the new task is handled the way timm's ``load_pretrained`` does it: the classifier
stays freshly initialised when the number of classes differs, and the first convolution is adapted
to another number of input channels: from RGB with :func:`timm.models.adapt_input_conv` (grayscale:
the RGB filters summed), from grayscale (a Fashion-MNIST classifier into an RGB model) by
repeating the filter over the channels divided by their number, so that a gray image gives the
response it gave before. Any other difference means another architecture and is an error.

The authors' SkipblockNet-M file also loads strictly, as it is, with :func:`load_official_weights`
(their keys renamed by :mod:`.official`); :func:`to_official_state_dict` converts back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

from biasloss._io import read_torch_file
from biasloss.errors import InputError, InputTypeError

from .official import (
    convert_official_state_dict,
    is_se_weight,
    key_examples,
    official_filter_fn,
    official_key_map,
    unwrap_state_dict,
)
from .skipblocknet import SkipblockNet

__all__ = ["PretrainedReport", "evaluated_weights", "load_official_weights", "load_pretrained", "to_official_state_dict"]

_PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained` did: tensors loaded as they were, adapted, or left fresh."""

    source: str
    loaded: List[str] = field(default_factory=list)
    adapted: List[str] = field(default_factory=list)  # first convolution, to another in_chans
    reinitialised: List[str] = field(default_factory=list)  # classifier, another number of classes

    def summary(self) -> str:
        parts = [f"{len(self.loaded) + len(self.adapted)} tensors from {self.source}"]
        if self.adapted:
            parts.append(f"adapted to the input channels: {', '.join(self.adapted)}")
        if self.reinitialised:
            parts.append(f"freshly initialised for the new classes: {', '.join(self.reinitialised)}")
        return "; ".join(parts)


def evaluated_weights(ckpt: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], str]:
    """The weights a ``biasloss train`` checkpoint was evaluated with and which they are: the
    EMA's (``torch.optim.swa_utils.AveragedModel`` keys ``module.<key>``, without the prefix) when
    the recipe kept one, else the model's; ``(state_dict, "ema" | "model")``."""
    ema = ckpt.get("ema")
    if ckpt.get("eval_weights") == "ema" and isinstance(ema, Mapping) and ema:
        return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}, "ema"
    return ckpt["model"], "model"


def _source_state(raw: Any) -> Dict[str, torch.Tensor]:
    """The state dict inside ``raw``: a biasloss training checkpoint, the authors' file, or a
    (wrapped) plain state dict."""
    if isinstance(raw, Mapping) and "args" in raw and isinstance(raw.get("model"), Mapping):
        weights, which = evaluated_weights(raw)
        if which == "ema":
            return weights
        raw = weights
    return official_filter_fn(raw)


def _classifier_prefixes(model: nn.Module) -> Tuple[str, ...]:
    """Module paths of the classifier: timm's ``pretrained_cfg["classifier"]`` where the model has
    one (timm models, ours), else the last ``nn.Linear`` (torchvision's ``fc``, ``classifier.3``)."""
    cfg = getattr(model, "pretrained_cfg", None)
    names = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if names:
        return (names,) if isinstance(names, str) else tuple(names)
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return (linears[-1],) if linears and linears[-1] else ()


def _adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """A first-convolution ``weight`` for ``in_chans`` input channels. timm's ``adapt_input_conv``
    converts from RGB weights only (it returns 1-channel weights unchanged for 3 channels)."""
    if weight.shape[1] == 1:
        return weight.repeat(1, in_chans, 1, 1) / in_chans
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, weight)


def _under(key: str, prefixes: Tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def load_pretrained(model: nn.Module, source: Union[Mapping[str, Any], _PathLike]) -> PretrainedReport:
    """Load the weights in ``source`` into ``model`` for fine-tuning; return what was done.

    Args:
        model: the model to initialise, built for the new task (its classes and input channels).
        source: a path or an already loaded checkpoint / state dict (see the module doc).

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: unreadable file, or weights of another architecture (names the layers).
        TypeError: ``source`` holds no state dict.
    """
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        raw = read_torch_file(source)
    else:
        name, raw = "the given state dict", source
    state = _source_state(raw)
    own = model.state_dict()
    head = _classifier_prefixes(model)
    convs = (f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    first_conv = next(convs, None)
    report = PretrainedReport(source=name)
    merged = dict(own)
    problems: List[str] = []
    for key, value in state.items():
        if key not in own:
            if not _under(key, head):  # e.g. a classifier the model (num_classes=0) does not have
                problems.append(f"{key} is not in the model")
            continue
        target = own[key]
        if value.shape == target.shape:
            merged[key] = value.to(dtype=target.dtype)
            report.loaded.append(key)
        elif _under(key, head):
            report.reinitialised.append(key)
        elif key == first_conv and value.dim() == 4 and value.shape[0] == target.shape[0]:
            merged[key] = _adapt_input_conv(target.shape[1], value).to(dtype=target.dtype)
            report.adapted.append(key)
        else:
            problems.append(f"{key}: checkpoint {tuple(value.shape)}, model {tuple(target.shape)}")
    missing = [k for k in own if k not in state and not _under(k, head)]
    if missing:
        problems.append(f"{len(missing)} of the model's entries are not in it ({key_examples(missing)})")
    if problems:
        raise InputError(
            f"{name} does not hold weights of this architecture ({type(model).__name__}): "
            + "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        )
    # a head the checkpoint lacks (trained with num_classes=0) stays fresh as well
    report.reinitialised += [k for k in own if k not in state and _under(k, head)]
    model.load_state_dict(merged, strict=True)
    return report


def to_official_state_dict(model_or_state_dict: nn.Module | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Our SkipblockNet-M state dict -> the authors' keys and shapes (the inverse conversion)."""
    if isinstance(model_or_state_dict, nn.Module):
        sd = model_or_state_dict.state_dict()
    else:
        sd = unwrap_state_dict(model_or_state_dict)
    ours_to_theirs = {ours: theirs for theirs, ours in official_key_map().items()}
    missing = [k for k in ours_to_theirs if k not in sd]
    unknown = [k for k in sd if k not in ours_to_theirs]
    if missing or unknown:
        raise InputError(
            "only SkipblockNet-M (width 1.0) has the authors' layout: "
            f"{len(missing)} keys missing ({key_examples(missing)}), {len(unknown)} extra ({key_examples(unknown)})"
        )
    with torch.device("meta"):  # SkipblockNet-M's shapes: no memory, no init cost
        reference = SkipblockNet(num_classes=sd["classifier.weight"].shape[0])
    ref = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    wrong = [f"{k} {tuple(sd[k].shape)} (M: {ref[k]})" for k in ours_to_theirs if tuple(sd[k].shape) != ref[k]]
    if wrong:
        raise InputError(
            f"only SkipblockNet-M (width 1.0, 3 input channels) has the authors' layout: {key_examples(wrong)}"
        )
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in ours_to_theirs.items():
        v = sd[ours]
        out[theirs] = v.reshape(v.shape[0], v.shape[1]) if is_se_weight(ours) else v
    return out


def load_official_weights(model: nn.Module, state_dict_or_path: Mapping[str, Any] | _PathLike) -> nn.Module:
    """Load the authors' SkipblockNet-M checkpoint into ``model`` (strictly) and return ``model``.

    ``model`` must have their layout: ``skipblocknet_m(num_classes=<the checkpoint's, 1000>)``,
    any ``in_chans=3`` input and ``small_input`` (strides hold no weights). In eval mode the model
    then gives the same outputs as theirs (at 224 px, where theirs runs).

    Raises:
        TypeError: ``model`` is not a SkipblockNet, or the input is not a state dict.
        ValueError: the checkpoint is not theirs, or does not fit ``model`` (names the layers).
    """
    if not isinstance(model, SkipblockNet):
        raise InputTypeError(f"load_official_weights needs a SkipblockNet, got {type(model).__name__}")
    raw = read_torch_file(state_dict_or_path) if isinstance(state_dict_or_path, (str, os.PathLike)) else state_dict_or_path
    converted = convert_official_state_dict(raw)
    own = model.state_dict()
    problems: list[str] = []
    for k, v in converted.items():
        if k not in own:
            problems.append(f"{k} is not in the model")
        elif own[k].shape != v.shape:
            problems.append(f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}")
    extra = [k for k in own if k not in converted]
    if extra:
        problems.append(f"the model has {len(extra)} more entries ({key_examples(extra)})")
    if problems:
        n_cls = converted["classifier.weight"].shape[0]
        raise InputError(
            "the authors' SkipblockNet-M checkpoint does not fit this model: "
            + "; ".join(problems[:4])
            + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
            + f". It needs skipblocknet_m(num_classes={n_cls}, in_chans=3)"
            + " (then model.reset_classifier(n) for another number of classes)."
        )
    model.load_state_dict(converted, strict=True)
    return model
