"""A training step never waits for the device: no device-to-host read (``.item()``, ``.tolist()``,
``bool(tensor)``) and no host-to-device copy inside the step, so that on a GPU the CPU queues
steps ahead of the kernels. Checked on the ``meta`` device, which takes the accelerator's code
paths and has no data: every read or copy across the host boundary is intercepted and counted,
and an epoch of 6 steps must make exactly as many as an epoch of 2 (the per-epoch summary and
the check at the epoch's last step)."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from biasloss import BiasLoss, FocalLoss
from biasloss.models import create_model
from biasloss.train.ema import ModelEma
from biasloss.train.engine import ClassifierObjective, ModelWithFeatures, train_one_epoch
from biasloss.train.recipes import build_scheduler, get_recipe

META = torch.device("meta")
_TO_COPY = torch.ops.aten._to_copy.default


class _HostBoundary(TorchDispatchMode):
    """Counts reads of meta tensors by the host (answering them with zeros) and copies from host
    memory to meta tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if func is torch.ops.aten._local_scalar_dense.default and tensors[0].device == META:
            self.counts["read"] += 1  # .item(), bool(), float()
            return 0
        if func is _TO_COPY and tensors[0].device == META and kwargs.get("device", META).type == "cpu":
            self.counts["read"] += 1  # .tolist(), .cpu()
            return torch.zeros(tensors[0].shape, dtype=kwargs.get("dtype") or tensors[0].dtype)
        if func is _TO_COPY and tensors[0].device.type == "cpu" and kwargs.get("device", tensors[0].device) == META:
            self.counts["copy in"] += 1
        return func(*args, **kwargs)


class _HostTensors(TorchFunctionMode):
    """Counts tensors made on the device from host values (``torch.tensor(x, device=...)``)."""

    def __init__(self, counts: Counter[str]) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and getattr(out, "device", None) == META:
            self.counts["copy in"] += 1
        return out


def _epoch_counts(steps: int, criterion: torch.nn.Module, ema: bool) -> Counter[str]:
    torch.manual_seed(0)
    model = create_model("skipblocknet_xs", num_classes=10, in_chans=1, small_input=True)
    # built on the CPU (timm makes a generator on the model's device, and meta has none), then moved
    average = ModelEma(model, 0.999).to(META) if ema else None
    model = model.to(META)
    recipe = get_recipe("fashion-mnist")
    # the recipe's optimizer, but not fused: meta has no fused kernel (CUDA's does not read the device either)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    scheduler = build_scheduler(optimizer, recipe, steps)
    batches = [(torch.empty(8, 1, 28, 28, device=META), torch.empty(8, dtype=torch.long, device=META))
               for _ in range(steps)]
    criterion = copy.deepcopy(criterion).to(META)
    boundary = _HostBoundary()
    with boundary, _HostTensors(boundary.counts):
        train_one_epoch(ModelWithFeatures(model), ClassifierObjective(criterion), optimizer, scheduler, batches,
                        epoch=0, seed=0, device=META, ema=average, model=model, progress=False, check_every=1000)
    return boundary.counts


@pytest.mark.parametrize("criterion, ema", [
    (BiasLoss(), False),
    (BiasLoss(scaling="running_min"), True),  # the ImageNet recipe's EMA
    (BiasLoss(scaling="rank"), False),
    (FocalLoss(), False),
], ids=["bias", "running_min+ema", "rank", "focal"])
def test_no_host_device_traffic_inside_a_step(criterion, ema):
    if isinstance(criterion, BiasLoss):
        criterion.record_weights = True  # as the trainer sets it: kept on the device
    two, six = _epoch_counts(2, criterion, ema), _epoch_counts(6, criterion, ema)
    assert six == two, f"per-step traffic: {six - two}"
    assert two["copy in"] == 0 and two["read"] <= 3, two  # the last step's check and the epoch's summary
