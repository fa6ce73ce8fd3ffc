"""One way to build any classifier by name: ours, timm's or torchvision's.

``create_model(name, num_classes=..., in_chans=..., small_input=...)`` is what the trainer's
``--model`` goes through:

* this package's models (``list_models()``: ``skipblocknet_xs/s/m/l``, and whatever else is added
  with :func:`register`), which understand ``small_input``;
* any timm model name (``timm.create_model(name, num_classes=..., in_chans=...)``);
* torchvision classifiers as ``torchvision.<name>`` (``torchvision.resnet18``,
  ``torchvision.mobilenet_v3_large``, ...), built without weights; for ``in_chans != 3`` the
  first convolution is rebuilt for the new number of input channels.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, List

from torch import nn

from biasloss.errors import InputError

from . import skipblocknet

__all__ = ["create_model", "is_model", "list_models", "register", "unknown_model_error"]

TORCHVISION_PREFIX = "torchvision."

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {
    name: getattr(skipblocknet, name) for name in skipblocknet.SKIPBLOCKNET_VARIANTS
}


def register(name: str, builder: Callable[..., nn.Module]) -> None:
    """Add a model of this package: ``builder(num_classes=, in_chans=, small_input=, **kwargs)``."""
    if not name or name.startswith(TORCHVISION_PREFIX):
        raise InputError(f"invalid model name {name!r}")
    _BUILDERS[name] = builder


def list_models() -> List[str]:
    """Names of this package's models (timm's and torchvision's are listed by those libraries)."""
    return sorted(_BUILDERS)


def _torchvision_names() -> List[str]:
    from torchvision import models as tvm

    return sorted(tvm.list_models(module=tvm))


def _adapt_first_conv(model: nn.Module, in_chans: int) -> nn.Module:
    """Replace the model's first ``Conv2d`` (which reads RGB) by one reading ``in_chans`` channels.

    The model is untrained, so the new layer is simply freshly initialised (PyTorch's default).
    """
    for path, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            break
    else:
        raise InputError(f"cannot adapt {type(model).__name__} to in_chans={in_chans}: no Conv2d")
    if conv.in_channels != 3 or conv.groups != 1:
        raise InputError(
            f"cannot adapt {type(model).__name__} to in_chans={in_chans}: its first convolution "
            f"{path!r} reads {conv.in_channels} channels in {conv.groups} groups"
        )
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    setattr(parent, attr, new)
    return model


def is_model(name: str) -> bool:
    """True if :func:`create_model` knows ``name``: ours, a timm model, or ``torchvision.<name>``."""
    import timm

    if not isinstance(name, str) or not name:
        return False
    if name in _BUILDERS or timm.is_model(name):
        return True
    return name.startswith(TORCHVISION_PREFIX) and name[len(TORCHVISION_PREFIX):] in _torchvision_names()


def unknown_model_error(name: str) -> InputError:
    """The :class:`~biasloss.errors.InputError` (a ``ValueError``) for a model name nobody knows,
    with the closest known names."""
    import timm

    candidates = list_models() + [TORCHVISION_PREFIX + n for n in _torchvision_names()] + timm.list_models()
    close = difflib.get_close_matches(name, list(dict.fromkeys(candidates)), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return InputError(
        f"unknown model {name!r}{hint} (ours: {', '.join(list_models())}; "
        f"any timm name; torchvision classifiers as '{TORCHVISION_PREFIX}<name>')"
    )


def create_model(
    name: str, *, num_classes: int, in_chans: int = 3, small_input: bool = False, **kwargs: Any
) -> nn.Module:
    """Build the classifier ``name`` with ``num_classes`` outputs for ``in_chans``-channel images.

    Args:
        name: one of :func:`list_models`, a timm model name, or ``torchvision.<name>``.
        num_classes: number of classes.
        in_chans: image channels (1 for grayscale).
        small_input: stride-8 layout for 28-64 px images; only this package's models have one.
        **kwargs: passed to the model's constructor (e.g. ``drop_rate``, ``bn_momentum``).

    Raises:
        ValueError: unknown name (with the closest matches), bad sizes, or ``small_input`` for a
            model that has no small-input layout.
    """
    if not isinstance(name, str) or not name:
        raise InputError(f"model name must be a non-empty string, got {name!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise InputError(f"in_chans must be a positive int, got {in_chans!r}")

    if name in _BUILDERS:
        return _BUILDERS[name](num_classes=num_classes, in_chans=in_chans, small_input=small_input, **kwargs)

    if small_input:
        raise InputError(
            f"small_input=True is only available for {', '.join(list_models())}; "
            f"{name!r} keeps its own layout (use it without small_input, or pick one of these)"
        )

    if name.startswith(TORCHVISION_PREFIX):
        from torchvision import models as tvm

        tv_name = name[len(TORCHVISION_PREFIX):]
        if tv_name not in _torchvision_names():
            raise unknown_model_error(name)
        model = tvm.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
        if in_chans != 3:
            model = _adapt_first_conv(model, in_chans)
        return model

    import timm

    if timm.is_model(name):
        return timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    raise unknown_model_error(name)
