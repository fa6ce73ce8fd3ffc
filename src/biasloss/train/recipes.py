"""Training recipes as data (the paper's section 5 and the authors' code), and the optimizer and schedule they build.

Every schedule is a per-step multiplier of the base learning rate (a ``LambdaLR``), so its
state is just the step count: a resumed run continues the curve exactly.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from biasloss._checks import positive
from biasloss.data import AugmentConfig, get_dataset_spec
from biasloss.errors import InputError

__all__ = ["RECIPES", "Recipe", "build_optimizer", "build_scheduler", "default_recipe", "get_recipe"]

_OPTIMIZERS = ("sgd", "rmsproptf", "adamw")
_SCHEDULES = ("onecycle", "multistep", "step_warmup", "cosine")


@dataclass(frozen=True)
class Recipe:
    """One training recipe: what the paper (or the authors' code) trains a dataset with."""

    name: str
    description: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "multistep"
    milestones: tuple[int, ...] = ()  # multistep: epochs at which lr *= lr_decay
    lr_decay: float = 0.1  # the schedule's factor (not the focal loss's gamma)
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6  # absolute lr at step 0 of the warm-up
    decay_every: float = 2.4  # step_warmup: epochs between multiplications by lr_decay
    pct_start: float = 0.25  # onecycle: fraction of steps spent rising
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    label_smoothing: float = 0.0
    ema_decay: float | None = None
    bn_momentum: float | None = None  # PyTorch convention (TF 0.99 == PyTorch 0.01)
    drop_last: bool = False
    model: str = "skipblocknet_m"

    def __post_init__(self) -> None:
        if self.optimizer not in _OPTIMIZERS:
            raise InputError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in _SCHEDULES:
            raise InputError(f"schedule must be one of {_SCHEDULES}, got {self.schedule!r}")
        for name in ("epochs", "batch_size", "lr"):
            positive(name, getattr(self, name))

    def override(self, **changes) -> Recipe:
        """A copy with the given fields changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(name="fashion-mnist", description="default: SkipblockNet-XS, stride-8 stem, SGD one-cycle, 2 epochs "
           "(7-10 min on a 2-core CPU)",
           epochs=2, batch_size=128, lr=0.2, nesterov=True, weight_decay=5e-5, schedule="onecycle",
           augment=AugmentConfig(crop_padding=2, hflip=True), model="skipblocknet_xs"),
    Recipe(name="digits", description="quick check on scikit-learn's digits",
           epochs=5, batch_size=64, lr=0.1, nesterov=True, weight_decay=5e-5, schedule="onecycle",
           augment=AugmentConfig(crop_padding=2), model="skipblocknet_xs"),
    Recipe(name="cifar100", description="the paper (sec. 5.2): SGD 0.1, wd 5e-4, x0.2 at 60/120/160, 200 epochs, "
           "flip + rotation 15",
           epochs=200, batch_size=128, lr=0.1, weight_decay=5e-4, milestones=(60, 120, 160), lr_decay=0.2,
           augment=AugmentConfig(hflip=True, rotation=15.0), model="cifar_shufflenetv2"),
    Recipe(name="cifar100-authors", description="the authors' code: SGD 0.1, wd 1e-4, x0.1 at 80/122, 160 epochs, "
           "crop 32 pad 4 + flip, last short batch dropped",
           epochs=160, batch_size=128, lr=0.1, weight_decay=1e-4, milestones=(80, 122),
           augment=AugmentConfig(crop_padding=4, hflip=True), drop_last=True, model="cifar_shufflenetv2"),
    Recipe(name="imagenet", description="the paper (sec. 5.1): RMSProp-TF, wd 1e-5, 1e-6 -> 0.032 over 3 epochs "
           "then x0.97 every 2.4 epochs, batch 512, EMA 0.99995, BN momentum 0.01, Inception crop",
           epochs=350, batch_size=512, lr=0.032, optimizer="rmsproptf", weight_decay=1e-5, schedule="step_warmup",
           warmup_epochs=3.0, lr_decay=0.97, augment=AugmentConfig(random_resized_crop=True, hflip=True),
           ema_decay=0.99995, bn_momentum=0.01),
    Recipe(name="food101", description="transfer (sec. 5.3): fine-tune every weight of an ImageNet-trained model "
           "(--init), SGD 0.01 cosine, 30 epochs, Inception crop + flip",
           epochs=30, batch_size=128, lr=0.01, weight_decay=1e-5, schedule="cosine", warmup_epochs=1.0,
           warmup_lr=1e-4, augment=AugmentConfig(random_resized_crop=True, hflip=True), model="skipblocknet_s"),
)}


def get_recipe(name: str) -> Recipe:
    """The recipe named ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise InputError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}") from None


def default_recipe(dataset: str) -> Recipe:
    """The recipe ``dataset`` trains with when none is named (its :class:`~biasloss.data.DatasetSpec`'s)."""
    return get_recipe(get_dataset_spec(dataset).recipe)


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD, AdamW or timm's TensorFlow-style RMSProp; no weight decay on norms and biases
    (timm's ``param_groups_weight_decay``, the decayed group first: the layout of our checkpoints)."""
    from timm.optim import param_groups_weight_decay

    groups = sorted(param_groups_weight_decay(model, recipe.weight_decay), key=lambda g: g["weight_decay"] == 0)
    if recipe.optimizer == "sgd":
        return _fastest(torch.optim.SGD, groups, {"fused": True}, lr=recipe.lr, momentum=recipe.momentum,
                        nesterov=recipe.nesterov)
    if recipe.optimizer == "adamw":
        return _fastest(torch.optim.AdamW, groups, {"fused": True}, lr=recipe.lr)
    from timm.optim import RMSpropTF  # TF epsilon placement, as the paper's recipe

    return _fastest(RMSpropTF, groups, {"foreach": True}, lr=recipe.lr, alpha=0.9, eps=1e-3, momentum=recipe.momentum)


def _fastest(cls: type[torch.optim.Optimizer], groups: list[dict[str, Any]], fast: dict[str, Any],
             **options: Any) -> torch.optim.Optimizer:
    """``cls(groups, **fast, **options)``: SGD's and AdamW's ``fused=True`` runs one kernel for all parameters,
    4-5x faster a step than the per-tensor loop on the CPU (benchmarks/bench_optimizer.py); RMSpropTF's
    ``foreach=True`` a few multi-tensor kernels a step (timm >= 1.0.20). The per-tensor form (``cls(groups,
    **options)``) where this torch, timm or device has none (CPU: torch >= 2.4 for AdamW's fused kernel)."""
    try:
        return cls(groups, **fast, **options)
    except (RuntimeError, TypeError):  # no such kernel for these parameters' device or dtype, or no such option
        return cls(groups, **options)


def lr_multiplier(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate at optimizer step ``step``, as a multiple of ``recipe.lr``."""
    total = max(1, recipe.epochs * steps_per_epoch)
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    start = min(1.0, recipe.warmup_lr / recipe.lr)

    def warmed(step: int, after: Callable[[int], float]) -> float:
        if step < warmup:
            return start + (1.0 - start) * step / warmup
        return after(step - warmup)

    if recipe.schedule == "onecycle":
        rise = max(1, int(recipe.pct_start * total))

        def onecycle(step: int) -> float:  # linear rise from lr/25, cosine fall to ~0
            if step < rise:
                return 0.04 + 0.96 * step / rise
            t = min(1.0, (step - rise) / max(1, total - rise))
            return 0.5 * (1 + math.cos(math.pi * t)) * (1 - 1e-4) + 1e-4

        return onecycle
    if recipe.schedule == "multistep":
        bounds = [m * steps_per_epoch for m in recipe.milestones]
        return lambda step: warmed(step, lambda s: recipe.lr_decay ** bisect.bisect_right(bounds, s + warmup))
    if recipe.schedule == "step_warmup":
        every = max(1, int(round(recipe.decay_every * steps_per_epoch)))
        return lambda step: warmed(step, lambda s: recipe.lr_decay ** (s // every))
    # cosine
    return lambda step: warmed(step, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total - warmup)))))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int) -> LambdaLR:
    """A per-step ``LambdaLR`` following the recipe's schedule."""
    return LambdaLR(optimizer, lr_multiplier(recipe, steps_per_epoch))
