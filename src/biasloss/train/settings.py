"""What a classification run trains, as data: :class:`TrainConfig` (one field per option of
``biasloss train``), the defaults of options left unset, and which options define the run."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from biasloss.losses import LOSSES
from biasloss.models import create_model, list_models
from biasloss.models.utils import BATCHNORMS
from biasloss.train.recipes import Recipe

__all__ = ["DEFAULTS", "IDENTITY_ARGS", "RECIPE_ARGS", "TrainConfig", "build_model", "resume_conflict",
           "trained_with"]


@dataclasses.dataclass
class TrainConfig:
    """What ``biasloss train`` trains: one field per option of the command (``--batch-size`` is
    ``batch_size``). ``None`` is "not given": resuming, the checkpoint's value; otherwise the
    recipe's (``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``label_smoothing``,
    ``model``) or :data:`DEFAULTS`. ``clamp`` is ``[low, high]``, or ``"none"`` for no clamp."""

    dataset: str | None = None
    data_dir: str | None = None
    download: bool = False
    model: str | None = None
    loss: str | None = None
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    alpha: float | None = None
    beta: float | None = None
    scaling: str | None = None
    clamp: list[float] | str | None = None
    gamma: float | None = None
    loss_scale: float | None = None
    no_loss_sync: bool = False
    seed: int | None = None
    out: str | None = None
    init: str | None = None
    resume: str | None = None
    stop_after: int | None = None
    limit: int | None = None
    device: str | None = None
    workers: int | None = None
    progress: bool | None = None
    amp: str | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    compile_mode: str | None = None


#: What an option left unset trains with (the model is the recipe's); every loss's own options
#: (:data:`biasloss.losses.LOSSES`) are set, whichever loss a run trains.
DEFAULTS: dict[str, Any] = {
    "dataset": "fashion-mnist", "loss": "bias", "seed": 0,
    **{key: value for spec in LOSSES.values() for key, value in spec.options.items()},
    "loss_scale": 1.0, "amp": "auto", "channels_last": True, "compile": False,
}
#: Options whose default is the recipe's; the recipe a checkpoint saves holds their values.
RECIPE_ARGS = ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "model")
#: Arguments that define what is trained; a resume must not change them.
IDENTITY_ARGS = ("dataset", "model", "loss", "recipe", "seed", "alpha", "beta", "scaling", "clamp", "gamma",
                 "loss_scale", "limit", "batch_size", "lr", "weight_decay", "label_smoothing")


def trained_with(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """What a training checkpoint trained: the value of each of :data:`IDENTITY_ARGS` and of
    ``epochs`` (the schedule it was planned with) it ran with. An option left to the recipe has
    the recipe's value, one the checkpoint predates its :data:`DEFAULTS` value; ``None`` where
    neither says (``limit``: all the data)."""
    args, recipe = ckpt.get("args") or {}, ckpt.get("recipe") or {}
    have: dict[str, Any] = {}
    for key in (*IDENTITY_ARGS, "epochs"):
        value = args.get(key)
        if value is None and key in RECIPE_ARGS:
            value = recipe.get(key)
        if value is None:
            value = DEFAULTS.get(key)
        have[key] = list(value) if isinstance(value, tuple) else value
    return have


def resume_conflict(have: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """The first setting of ``wanted`` that ``have`` (:func:`trained_with`) differs in, as
    ``"--lr 0.1, not 0.2"`` (the value trained with first); ``None`` when they agree."""
    for key, given in wanted.items():
        value = have.get(key)
        if value != given:
            return f"--{key.replace('_', '-')} {value}, not {given}"
    return None


def build_model(args, spec, recipe: Recipe | None = None) -> nn.Module:
    """``args.model`` for data set ``spec`` (classes, channels, the stride-8 stem where it has one)."""
    # Only our SkipblockNets have a stride-8 layout; the CIFAR zoo is built for 32 px already.
    small_input = spec.small_input and args.model in list_models()
    model = create_model(args.model, num_classes=spec.num_classes, in_chans=spec.in_chans,
                         small_input=small_input)
    if recipe is not None and recipe.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, BATCHNORMS):
                m.momentum = recipe.bn_momentum
    return model
