"""The pre-pooling feature map of any classifier, for the Bias Loss.

The Bias Loss weighs each sample by the variance of "the feature map of the last convolutional
layer before global pooling and dropout". Models that follow timm's contract expose that map:
``features = model.forward_features(x)``, ``logits = model.forward_head(features)``. Other models
(torchvision's ResNet, MobileNet, ShuffleNet, DenseNet, SqueezeNet, EfficientNet, RegNet, ...)
pool inside ``forward``; :class:`FeatureTap` captures the map there with a forward hook::

    tap = FeatureTap(model)                      # finds e.g. "layer4" for a torchvision ResNet
    logits, features = forward_with_features(model, x, tap)
    loss = criterion(logits, target, features)

Where the automatic search lands on common torchvision models (checked in the tests):

======================  ==================  =====================================================
model                   layer               note
======================  ==================  =====================================================
ResNet, ResNeXt, WRN    ``layer4``
MobileNetV2/V3          ``features``
EfficientNet (V1, V2)   ``features``
ShuffleNetV2            ``conv5``
RegNet                  ``trunk_output``
DenseNet                ``features``        ``forward`` applies ``F.relu(..., inplace=True)`` to
                                            this output before pooling; as the ReLU works in
                                            place on the very tensor the hook holds, the tap
                                            ends up holding the rectified map that is pooled
                                            (and its autograd history includes that ReLU)
SqueezeNet              ``features``        the classifier is Dropout, 1x1 conv to the classes,
                                            ReLU, global pool: that conv plays the part of the
                                            linear classifier of other networks (a 1x1 conv and
                                            a global average pool commute), so the map "before
                                            global pooling and dropout" is the output of the
                                            last Fire module, ``(B, 512, H, W)``, not the class
                                            score map ``classifier.2``. Pass
                                            ``layer="classifier.2"`` for the latter.
======================  ==================  =====================================================
"""

from __future__ import annotations

import difflib
import itertools
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from biasloss.errors import InputError, InputTypeError
from biasloss.models.utils import eval_mode

__all__ = ["FeatureTap", "forward_with_features"]

# Top-level attributes that hold a classifier head: never tapped by the automatic search.
_HEAD_NAMES = ("classifier", "head", "fc", "last_linear")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module that does the work inside (Distributed)DataParallel or torch.compile wrappers."""
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile: no public accessor
            model = model._orig_mod
        else:
            return model


def _candidate_names(model: nn.Module, max_depth: int = 2, limit: int = 60) -> list[str]:
    names = [n for n, _ in model.named_modules() if n and n.count(".") < max_depth]
    if len(names) > limit:
        names = names[:limit] + [f"... ({len(names) - limit} more)"]
    return names


def _is_adaptive_pool(module: nn.Module) -> bool:
    name = type(module).__name__
    return "AdaptiveAvgPool" in name or "AdaptiveMaxPool" in name or "AdaptivePool" in name


def _head_prefixes(model: nn.Module) -> list[str]:
    heads: list[nn.Module] = []
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            head = get_classifier()
        except Exception:  # noqa: BLE001 - a broken helper only means no hint
            head = None
        if isinstance(head, nn.Module):
            heads.append(head)
    for attr in _HEAD_NAMES:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            heads.append(head)
    return [n for n, m in model.named_modules() if n and any(m is h for h in heads)]


def _probe(model: nn.Module, input_size: Sequence[int]) -> list[tuple[str, Optional[tuple[int, ...]]]]:
    """Run one forward pass on zeros in eval mode without gradients; return ``(name, shape)`` of
    every submodule's output in the order the calls finish (shape ``None`` for non-tensors).

    Zeros, not random numbers, so that the global RNG is left alone; eval mode, so that batch norm
    statistics are left alone; every module's own training flag is restored afterwards.
    """
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros((1, *input_size), device=device, dtype=dtype)

    events: list[tuple[str, Optional[tuple[int, ...]]]] = []

    def recorder(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            events.append((name, tuple(output.shape) if isinstance(output, Tensor) else None))

        return hook

    handles = [m.register_forward_hook(recorder(n)) for n, m in model.named_modules() if n]
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    except Exception as e:
        raise ValueError(f"FeatureTap could not run a probe forward pass with input {tuple(x.shape)} to find the "
                         f"feature layer ({type(e).__name__}: {e}); pass input_size=(C, H, W) that the model "
                         f"accepts, or layer= with one of: {_candidate_names(model)}") from e
    finally:
        for handle in handles:
            handle.remove()
    return events


def _find_layer(model: nn.Module, input_size: Optional[Sequence[int]]) -> str:
    """Name of the module whose output is the last 4-D map with more than one spatial position,
    skipping adaptive pooling modules and the classifier head (see the module docstring)."""
    if input_size is None:  # C: the in_channels of the first Conv2d
        input_size = (next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3), 224, 224)
    input_size = tuple(int(s) for s in input_size)
    if len(input_size) != 3:
        raise InputError(f"input_size must be (C, H, W), got {input_size}")
    events = _probe(model, input_size)

    modules = dict(model.named_modules())
    heads = _head_prefixes(model)
    last_call = {name: i for i, (name, _) in enumerate(events)}
    chosen = None
    for i, (name, shape) in enumerate(events):
        if shape is None or len(shape) != 4 or shape[2] * shape[3] <= 1:
            continue
        if last_call[name] != i:  # a module called again later: its hook would see the later call
            continue
        if _is_adaptive_pool(modules[name]) or any(name == h or name.startswith(h + ".") for h in heads):
            continue
        chosen = name
    if chosen is None:
        ran = [f"{n}: {s if s is not None else 'not a tensor'}" for n, s in events]
        if len(ran) > 40:
            ran = ran[:20] + ["..."] + ran[-20:]
        raise InputError(f"FeatureTap found no module whose output is a 4-D (B, C, H, W) feature map with "
                         f"H * W > 1 (outside adaptive pooling and the classifier head {heads}) in a probe "
                         f"forward pass with input {(1, *input_size)}. If the last map is 1 x 1 at this "
                         f"size, pass a larger input_size; otherwise pass layer=. Modules run, with output "
                         f"shapes: {ran}")
    tokens = [(n, s) for n, s in events[last_call[chosen] + 1:]
              if s is not None and len(s) == 3 and not any(n == h or n.startswith(h + ".") for h in heads)]
    if tokens:
        raise InputError(f"FeatureTap: after the last 4-D map ({chosen!r}) the model computes 3-D outputs "
                         f"(e.g. {tokens[0][0]!r}: {tokens[0][1]}), as a transformer on tokens does, so "
                         f"there is no convolutional feature map before pooling to find automatically; "
                         f"pass layer= (candidates: {_candidate_names(model)})")
    return chosen


class FeatureTap:
    """Capture the output of one module of ``model`` at every forward pass, with a forward hook.

    Args:
        model: the classifier; for a ``DistributedDataParallel``/``DataParallel`` or
            ``torch.compile`` wrapper the hook goes on the wrapped module (layer names are those
            of the wrapped module, without ``module.``). Hooks under ``torch.compile`` are not
            tested.
        layer: the module to tap: a dotted name (``"layer4"``, ``"features"``), a submodule of
            ``model``, or ``None`` to find the last 4-D feature map before global pooling
            automatically. The search runs one probe forward pass on zeros of shape
            ``(1, *input_size)`` in eval mode without gradients (batch norm statistics, the
            random number generator and every module's training flag are left as they were)
            and picks the module that produces the last ``(B, C, H, W)`` output with
            ``H * W > 1``, skipping adaptive pooling layers and the classifier head
            (``model.get_classifier()`` and attributes named ``classifier``, ``head``, ``fc``,
            ``last_linear``). See the module docstring for where it lands on torchvision models.
        input_size: ``(C, H, W)`` of the probe; default ``(C, 224, 224)`` with ``C`` the
            ``in_channels`` of the first ``Conv2d``. The probe must leave the last map larger
            than 1 x 1. Only used when ``layer`` is ``None``.

    After ``model(x)``, :attr:`features` holds the hooked module's output, the tensor itself (not
    detached, so gradients flow through it; detach it yourself where needed). It is reset to
    ``None`` when the model's forward starts and keeps only the latest output. If the module runs
    more than once in a forward pass, the last call wins. Later in-place operations on that tensor
    inside the model's forward show in :attr:`features` (see DenseNet in the module docstring).
    Not thread-safe: one tap per model per thread.

    Use :meth:`remove` (or a ``with`` block) to take the hooks off.

    Raises:
        ValueError: the named layer does not exist, the module is not part of ``model``, or the
            automatic search finds no feature map; the message lists candidate names.
    """

    def __init__(self, model: nn.Module, layer: Union[str, nn.Module, None] = None, *,
                 input_size: Optional[Sequence[int]] = None) -> None:
        root = _unwrap(model)
        if layer is None:
            name = _find_layer(root, input_size)
        elif isinstance(layer, str):
            name = layer
            if not name:
                raise InputError("layer='' names the model itself; name a submodule, e.g. 'layer4'")
            try:
                root.get_submodule(name)
            except AttributeError:
                all_names = [n for n, _ in root.named_modules() if n]
                close = difflib.get_close_matches(name, all_names, n=3)
                hint = f" Did you mean {close}?" if close else ""
                raise InputError(f"FeatureTap: {type(root).__name__} has no submodule named {name!r}.{hint} "
                                 f"Candidates: {_candidate_names(root)}") from None
        elif isinstance(layer, nn.Module):
            found = [n for n, m in root.named_modules() if m is layer and n]
            if not found:
                raise InputError(f"FeatureTap: the given {type(layer).__name__} is not a submodule of "
                                 f"{type(root).__name__}; pass one of its submodules or a name from: "
                                 f"{_candidate_names(root)}")
            name = found[0]
        else:
            raise InputTypeError(f"layer must be a module name, a submodule or None, got {type(layer).__name__}")
        self.model: nn.Module = root
        self.layer_name: str = name
        self.module: nn.Module = root.get_submodule(name)
        self.features: Optional[Tensor] = None
        self._handles = [self.module.register_forward_hook(self._capture), root.register_forward_pre_hook(self._reset)]

    def _capture(self, module: nn.Module, inputs, output) -> None:
        if not isinstance(output, Tensor):
            raise InputTypeError(f"FeatureTap: module {self.layer_name!r} returned {type(output).__name__}, "
                                 "expected a Tensor; tap another layer")
        self.features = output

    def _reset(self, module: nn.Module, inputs) -> None:
        self.features = None

    def clear(self) -> None:
        """Drop the reference to the last captured output."""
        self.features = None

    def remove(self) -> None:
        """Take the hooks off the model and drop the last output; safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.features = None

    @property
    def active(self) -> bool:
        """Whether the hooks are still on the model."""
        return bool(self._handles)

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"FeatureTap({type(self.model).__name__}, layer={self.layer_name!r}, {state})"


def forward_with_features(model: nn.Module, x: Tensor, tap: Optional[FeatureTap] = None) -> tuple[Tensor, Tensor]:
    """Run ``model`` on ``x`` and return ``(logits, features)``, the pre-pooling feature map.

    - With a ``tap``: ``logits = model(x)`` and ``features`` is what the tap captured. The tap
      wins over the timm contract when both are available: it is the explicit choice.
    - Else, for models with timm's contract: ``features = model.forward_features(x)`` and
      ``logits = model.forward_head(features)``.

    A model wrapped in ``DistributedDataParallel`` must be called through the wrapper (its
    ``forward`` prepares the gradient reduction), so it needs a tap:
    ``FeatureTap(ddp_model)`` hooks the wrapped module.

    Raises:
        ValueError: no tap and no ``forward_features``/``forward_head``, or a tap made for another
            model.
        RuntimeError: the tapped module did not run during ``model(x)``.
    """
    if tap is not None:
        if not isinstance(tap, FeatureTap):
            raise InputTypeError(f"tap must be a FeatureTap or None, got {type(tap).__name__}")
        if not tap.active:
            raise InputError("the FeatureTap was removed; make a new one")
        if tap.model is not _unwrap(model):
            raise InputError(f"the FeatureTap was made for another model ({type(tap.model).__name__}); "
                             "make one with FeatureTap(model)")
        logits = model(x)
        if tap.features is None:
            raise RuntimeError(f"FeatureTap: module {tap.layer_name!r} did not run during the forward pass")
        return logits, tap.features
    if callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None)):
        features = model.forward_features(x)
        return model.forward_head(features), features
    inner = _unwrap(model)
    if inner is not model and callable(getattr(inner, "forward_features", None)):
        raise InputError(f"{type(model).__name__} wraps a model with forward_features/forward_head, but calling "
                         "those on the wrapped module would bypass the wrapper's forward; pass tap=FeatureTap(model)")
    raise InputError(f"{type(inner).__name__} has no forward_features/forward_head (timm's contract); pass "
                     "tap=FeatureTap(model) to capture the feature map with a hook")
