"""One epoch of training and one pass of evaluation, whatever the model, the loss and the task.

The step: ``loss = objective(net, inputs, target)`` (:class:`ClassifierObjective`,
:class:`DetectorObjective`), backward, optimizer and schedule step, EMA update.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from biasloss.data import DatasetCorruptError
from biasloss.errors import InputError, NonFiniteLossError
from biasloss.features import FeatureTap, forward_with_features
from biasloss.train.distributed import any_rank, is_distributed

__all__ = ["ClassifierObjective", "DetectorObjective", "EpochResult", "ModelWithFeatures", "NonFiniteLossError",
           "Objective", "evaluate", "step_seed", "train_one_epoch"]


class ModelWithFeatures(nn.Module):
    """``forward(x) -> (logits, features)`` for any classifier, so that DDP and ``torch.compile``
    see one module. Features come from timm's ``forward_features`` or a :class:`FeatureTap`;
    with ``with_features=False`` only logits are computed and ``features`` is ``None``."""

    def __init__(self, model: nn.Module, tap: FeatureTap | None = None, with_features: bool = True) -> None:
        super().__init__()
        self.model = model
        self.tap = tap
        self.with_features = with_features

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return forward_with_features(self.model, x, self.tap) if self.with_features else (self.model(x), None)


class Objective(nn.Module):
    """How a task turns a batch into its training loss: ``forward(net, inputs, target) ->
    (loss, logits or None)``; ``logits`` (classifiers only) are scored for top-1 and top-5.
    A module, so that the loss's own state (``train()``/``eval()``, buffers) goes with it."""


class ClassifierObjective(Objective):
    """``criterion(logits, target, features)`` of ``net(images) -> (logits, features)``
    (a :class:`ModelWithFeatures`, possibly wrapped in DDP or compiled)."""

    def __init__(self, criterion: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.criterion = criterion
        self.scale = float(scale)  # the loss's multiplier (--loss-scale); 1 multiplies nothing

    def forward(self, net: nn.Module, inputs: Tensor, target: Tensor) -> tuple[Tensor, Tensor | None]:
        logits, features = net(inputs)
        loss = self.criterion(logits, target, features)
        return (loss if self.scale == 1.0 else loss * self.scale), logits


class DetectorObjective(Objective):
    """The sum of the losses a torchvision detector returns in training mode for
    ``net(images, targets)`` (SSD: box regression and classification)."""

    def forward(self, net: nn.Module, inputs: list[Tensor], target: list[dict[str, Tensor]]) -> tuple[Tensor, None]:
        losses = net(inputs, [{k: v for k, v in t.items() if k in ("boxes", "labels")} for t in target])
        return sum(losses.values()), None  # type: ignore[return-value]


@dataclass
class EpochResult:
    loss: float
    top1: float | None  # percent; None where the task has no classes to score (detection)
    top5: float | None  # percent
    samples: int
    time_s: float
    steps: int = 0
    interrupted: bool = False
    error: DatasetCorruptError | None = None  # the data file that ended the epoch early
    totals: list[float] | None = None  # loss sum, top-1 and top-5 hits, samples, over all ranks
    class_top1: list[float] | None = None  # evaluate: top-1 % of each class's samples (NaN: none seen)
    cross_entropy: float | None = None  # evaluate: mean cross-entropy of the logits, whatever the loss

    @property
    def throughput(self) -> float:
        return self.samples / max(self.time_s, 1e-9)


def step_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """The RNG seed of one training step of one rank: dropout and any other model randomness are
    a pure function of (seed, epoch, step, rank), so a resumed run repeats them exactly, and the
    ranks of a torchrun job draw different masks for their different samples (rank 0 draws what a
    single process draws)."""
    return (seed * 1_000_003 + epoch * 100_003 + step + rank * 1_000_000_007) % (2**63 - 1)


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, unit="batch")


class _UntilBadData:
    """Iterates ``loader`` and ends, keeping the error, at a data file it cannot read, so that
    the epoch stops after its last whole step (and the run can checkpoint there)."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.error: DatasetCorruptError | None = None

    def __iter__(self):
        try:
            yield from self.loader
        except DatasetCorruptError as e:
            self.error = e


def _accumulate(totals: Tensor, loss: Tensor, logits: Tensor | None, target) -> int:
    """Add one batch's loss sum and its top-1 and top-5 hits (when there are logits) to
    ``totals`` (on the device, without synchronising: no host value is copied in); returns the
    batch's sample count, which the host keeps."""
    n = len(target)
    if logits is None:
        totals[0] += loss.detach().double() * n
    else:
        labels = target.argmax(1) if target.dim() == 2 else target  # soft targets: the most likely class
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(labels.unsqueeze(1))
        top1, top5 = hits[:, 0].sum(), hits.any(1).sum()
        totals += torch.stack((loss.detach().double() * n, top1.double(), top5.double()))
    return n


def _summarise(totals: Tensor, samples: int, elapsed: float, steps: int, interrupted: bool = False,
               scored: bool = True) -> EpochResult:
    """Sum ``totals`` (loss sum, top-1 and top-5 hits) and ``samples`` over ranks and turn them
    into means and percentages (``scored``: top-1 and top-5 were counted)."""
    sums = torch.cat((totals, totals.new_full((1,), float(samples))))
    if is_distributed():
        dist.all_reduce(sums)
    values = sums.tolist()
    seen = max(values[3], 1.0)
    return EpochResult(totals=values, loss=values[0] / seen, top1=100 * values[1] / seen if scored else None,
                       top5=100 * values[2] / seen if scored else None, samples=int(values[3]), time_s=elapsed,
                       steps=steps, interrupted=interrupted)


def train_one_epoch(net: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, loader: Iterable, *, epoch: int, seed: int,
                    device: torch.device, rank: int = 0, amp_dtype: torch.dtype | None = None,
                    scaler: torch.amp.GradScaler | None = None, ema: nn.Module | None = None,
                    model: nn.Module | None = None, start_step: int = 0, start_totals: list[float] | None = None,
                    should_stop: Callable[[], bool] = lambda: False, progress: bool | None = None,
                    check_every: int = 10) -> EpochResult:
    """Train ``net`` for one epoch of ``loader``, the loss being ``objective(net, inputs, target)``.

    ``start_step`` skips that many batches (a resumed, interrupted epoch: the loader's order and
    augmentation are replayed, not trained on); ``start_totals`` are the interrupted epoch's
    ``EpochResult.totals`` (give them on one rank only), so its loss and accuracy count every step.
    ``ema`` (a :class:`~biasloss.train.ema.ModelEma`) averages ``model`` (the weights ``net``
    trains, unwrapped) after every step.

    A step queues its work on the device and never waits for it: the running sums stay on the
    device, and the host looks at them (one copy) only every ``check_every`` steps and at the
    last. There the epoch ends, on every rank at once under torchrun (:func:`any_rank`): with
    :class:`NonFiniteLossError` when the loss of any rank is NaN or infinite, or early with
    ``interrupted=True`` when ``should_stop()`` is true on any rank. Outside torchrun
    ``should_stop`` is also obeyed at the very step it turns true.
    """
    net.train()
    objective.train()
    progress = sys.stderr.isatty() if progress is None else progress
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits
    samples = 0
    if start_totals is not None:
        totals += torch.tensor(start_totals[:3], dtype=torch.float64).to(device)
        samples = int(start_totals[3])
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    alone = not is_distributed()
    steps = len(loader)  # type: ignore[arg-type]
    start = time.perf_counter()
    step = -1
    source = _UntilBadData(loader)
    bar = _progress(source, steps, f"epoch {epoch + 1}", progress)
    interrupted = False
    scored = False
    for step, (images, target) in enumerate(bar):
        if step < start_step:
            continue
        torch.manual_seed(step_seed(seed, epoch, step, rank))
        with autocast:
            loss, logits = objective(net, images, target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model if model is not None else net)
        scored = logits is not None
        with torch.no_grad():
            samples += _accumulate(totals, loss, logits.detach() if scored else None, target)
        stop = should_stop()
        if (step + 1) % check_every == 0 or step + 1 == steps or (stop and alone):
            non_finite, stop = any_rank([~torch.isfinite(totals[0]), stop], device)
            if non_finite:
                where = "" if alone or not math.isfinite(loss.item()) else " on another rank"
                raise NonFiniteLossError(f"training loss became {'non-finite' if where else loss.item()}{where} "
                                         f"by epoch {epoch + 1}, step {step + 1}")
            if progress:
                _show(bar, totals, samples, scored, start)
            if stop:
                interrupted = True
                break
    result = _summarise(totals, samples, time.perf_counter() - start, step + 1,
                        interrupted or source.error is not None, scored)
    if not math.isfinite(result.loss):
        raise NonFiniteLossError(f"training loss became non-finite in epoch {epoch + 1}")
    result.error = source.error
    return result


def _show(bar, totals: Tensor, samples: int, scored: bool, start: float) -> None:
    """The progress bar's running loss, top-1 and images per second."""
    loss, top1, _ = totals.tolist()
    seen = max(samples, 1)
    bar.set_postfix(loss=f"{loss / seen:.4f}", **({"acc": f"{100 * top1 / seen:.2f}"} if scored else {}),
                    img_s=f"{seen / (time.perf_counter() - start):.0f}")


@torch.no_grad()
def evaluate(net: nn.Module, criterion: nn.Module | None, loader: Iterable, *, device: torch.device,
             amp_dtype: torch.dtype | None = None, progress: bool | None = None,
             num_classes: int | None = None) -> EpochResult:
    """Loss (``criterion``'s, the run's own), top-1 and top-5 (percent) of ``net`` over ``loader``,
    summed over all ranks, the plain cross-entropy (``cross_entropy``: comparable between runs of
    any loss) and the top-1 of each class (``class_top1``). Ranks may hold different numbers of batches (even none):
    the only collectives are at the end; under torchrun give ``num_classes``, so that a rank
    without a batch still knows the per-class counts' shape. A loader without a sample (over all
    ranks) is an :class:`~biasloss.errors.InputError`: a score over nothing is no score."""
    net.eval()
    if criterion is not None:
        criterion.eval()
    progress = sys.stderr.isatty() if progress is None else progress
    totals = torch.zeros(3, device=device, dtype=torch.float64)
    ce_sum = torch.zeros((), device=device, dtype=torch.float64)
    samples = 0
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    per_class = None if num_classes is None else torch.zeros(2, num_classes, device=device, dtype=torch.float64)
    start = time.perf_counter()
    for images, target in _progress(loader, len(loader), "eval", progress):  # type: ignore[arg-type]
        with autocast:
            logits, features = net(images)
            loss = criterion(logits, target, features) if criterion is not None else logits.new_zeros(())
        samples += _accumulate(totals, loss, logits.float(), target)
        ce_sum += nn.functional.cross_entropy(logits.float(), target, reduction="sum").double()
        per_class = _count_classes(per_class, logits, target)
    result = _summarise(totals, samples, time.perf_counter() - start, len(loader))  # type: ignore[arg-type]
    if is_distributed():
        dist.all_reduce(ce_sum)
    result.cross_entropy = ce_sum.item() / max(result.samples, 1)
    if per_class is not None:
        if is_distributed():
            dist.all_reduce(per_class)
        hits, seen = per_class.tolist()
        result.class_top1 = [100 * h / n if n else math.nan for h, n in zip(hits, seen)]
    if result.samples == 0:  # after the collectives: every rank raises, none waits
        raise InputError("nothing to evaluate: the evaluation data holds no samples (an empty test split?); "
                         "a loss and accuracy over nothing would read 0.0")
    return result


def _count_classes(per_class: Tensor | None, logits: Tensor, target: Tensor) -> Tensor:
    """``per_class`` (created at the first batch) plus this batch's top-1 hits and samples per class."""
    if per_class is None:
        per_class = torch.zeros(2, logits.shape[1], device=logits.device, dtype=torch.float64)
    labels = target.argmax(1) if target.dim() == 2 else target
    hit = (logits.argmax(1) == labels).to(per_class.dtype)
    per_class[0].index_add_(0, labels, hit)
    per_class[1].index_add_(0, labels, torch.ones_like(hit))
    return per_class
