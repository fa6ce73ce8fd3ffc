"""The training run around the engine, whatever the task: its directory, resume, epochs and files.

A task builds a :class:`Run` (classification in :mod:`biasloss.train.runner`, detection in
:mod:`biasloss.detection.train`); :func:`fit` trains it epoch by epoch with
:func:`~biasloss.train.engine.train_one_epoch`, validates, appends one JSON line per epoch to
``metrics.jsonl`` and writes ``last.pt`` and ``best.pt`` atomically, the checkpoint before the
log line. Ctrl-C or SIGTERM (:class:`StopFlag`) ends the step in progress and writes ``last.pt``
at that step, then raises :class:`~biasloss.errors.TrainingInterrupted`; :func:`resume` continues
from it exactly, because everything random is a function of ``(seed, epoch, step)``. A NaN or
infinite loss raises :class:`~biasloss.errors.NonFiniteLossError` and leaves the last good
checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import biasloss
from biasloss._checks import one_line
from biasloss._io import atomic_write_text, remove_stale_temps, writable_dir
from biasloss.data import DatasetCorruptError
from biasloss.errors import InputError, TrainingInterrupted
from biasloss.train.checkpoint import CheckpointError, save_checkpoint
from biasloss.train.distributed import (DistInfo, any_rank, barrier, broadcast_buffers, cleanup_distributed,
                                        init_distributed)
from biasloss.train.ema import ModelEma
from biasloss.train.engine import Objective, train_one_epoch

__all__ = ["RUN_FILES", "Run", "RunLock", "Start", "StopFlag", "autocast_dtype", "check_run_dir", "fit",
           "metric_problem", "next_free_dir", "open_run_dir", "read_metrics", "resume", "train_task"]

#: The files of a run directory: their presence means the directory holds a run.
RUN_FILES = ("metrics.jsonl", "last.pt", "best.pt")


class StopFlag:
    """Ctrl-C / SIGTERM set a flag polled after every step; a second Ctrl-C stops at once.
    ``signum`` is the first signal that arrived (``None`` before any)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.signum is None:
            self.signum = signum
        print(f"\nbiasloss: {signal.Signals(signum).name} received, saving a checkpoint...", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def autocast_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp``: ``auto`` (or None, from checkpoints older than the flag)
    is bf16 (fp16 where unsupported) on CUDA and full precision elsewhere; ``bf16``/``fp16`` are
    honoured on any device (CPU autocast supports both); ``off`` is full precision."""
    amp = amp or "auto"
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def check_run_dir(out: Path, resume: str | None) -> None:
    """Refuse to mix two runs in one directory: a fresh run needs an ``--out`` without a run in
    it, and a resume writes into its own run directory or into one that holds no run yet."""
    held = [name for name in RUN_FILES if (out / name).exists()]
    if not held:
        return
    if resume is not None and Path(resume).resolve().parent == out.resolve():
        return
    what = f"resumes {resume}, a run of another directory" if resume else "would start a new run there"
    raise InputError(f"--out {out} already holds a run ({', '.join(held)}) and this command {what}; continue "
                     f"that run with --resume {out / 'last.pt'}, or give a new --out")


def next_free_dir(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... past directories that already hold a run: a run
    without ``--out`` never meets an old one."""
    out, n = base, 1
    while any((out / name).exists() for name in RUN_FILES):
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


class RunLock:
    """An exclusive lock on a run directory for the whole run (``fcntl.flock`` on ``.lock``,
    released when the process ends, however it ends): a second training on the same ``--out``
    is refused instead of interleaving its metrics and checkpoints with the first."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"
        self._file: Any = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        # held open for the run; a .lock of other bytes than a pid is still a lock, never a decode error
        self._file = open(self.path, "a+", encoding="utf-8", errors="replace")  # noqa: SIM115
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip()
            self._file.close()
            raise InputError(f"--out {self.path.parent} is in use by another training"
                             + (f" (pid {holder})" if holder else "") + "; wait for it or give another --out") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            self._file.close()


def open_run_dir(out: Path, resume: str | None, cleanup: contextlib.ExitStack) -> None:
    """Make ``out`` the run's directory for the rest of ``cleanup``'s life: checked
    (:func:`check_run_dir`), writable, locked (:class:`RunLock`), stale temporary files removed.

    A run that ends (fails) without writing anything in ``out`` leaves no trace there: when
    ``cleanup`` closes and ``out`` holds the same entries as just after it was opened, the ``.lock``
    this run created is removed, then ``out`` and the parents this run created, if empty. Nothing a
    previous run wrote is removed, nor a ``.lock`` that was there before."""
    out = Path(out)
    check_run_dir(out, resume)
    created = [d for d in (out, *out.parents) if not d.exists()]  # deepest first
    lock = out / ".lock"
    had_lock = lock.exists()
    writable_dir(out)
    entries: list[set[str]] = []
    cleanup.callback(_remove_if_untouched, out, entries, None if had_lock else lock, created)
    cleanup.enter_context(RunLock(out))  # closed before the callback above runs
    for name in RUN_FILES:  # the lock says no one else writes them
        remove_stale_temps(out / name)
    entries.append({p.name for p in out.iterdir()})


def _remove_if_untouched(out: Path, entries: list[set[str]], lock: Path | None, created: list[Path]) -> None:
    """:func:`open_run_dir`'s clean-up of a run that wrote nothing (``entries``: what ``out`` held
    once opened; empty when opening itself failed)."""
    with contextlib.suppress(OSError):
        if entries and {p.name for p in out.iterdir()} != entries[0]:
            return  # the run wrote something: keep all
        if lock is not None:
            lock.unlink(missing_ok=True)
        for d in created:
            d.rmdir()  # OSError when not empty: stop there


def metric_problem(record: dict[str, Any]) -> str | None:
    """What makes an epoch record of ``metrics.jsonl`` untrustworthy, ``None`` if nothing: every
    value but ``epoch`` must be a finite number (not a bool, a string, ``null``, NaN or infinity),
    or a list of numbers, where NaN stands for "not measured" (``val_class_top1``: a class the
    validation split lacks)."""
    for key, value in record.items():
        if key == "epoch":
            continue
        if isinstance(value, list):
            bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (int, float))]
            if bad:
                return f"{key!r} holds {bad[0]!r}, not a number"
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{key!r} is {json.dumps(value) if isinstance(value, (str, type(None))) else value!r}, " \
                   "not a finite number"
    return None


def read_metrics(path: str | os.PathLike, upto_epoch: int | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, one per epoch in order (``[]`` when there is no file).

    Lines that are not JSON objects with an integer ``epoch`` are skipped (a line torn by a crash
    of an older version); when an epoch appears twice the later line wins. With ``upto_epoch``,
    only epochs up to it are kept.

    A kept line whose numbers cannot be trusted (:func:`metric_problem`: NaN, infinity, a string
    or ``null`` as a metric) is not skipped but refused, with an
    :class:`~biasloss.errors.InputError` naming the file and the line: skipping it would shift
    "the last epoch" or "the last two epochs" onto other lines, and reading it would put ``nan``
    into tables as if measured. A file that is not UTF-8 text is refused the same way.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a metrics.jsonl (not UTF-8 text: {e.reason} at byte {e.start})") from None
    records: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not (isinstance(record, dict) and isinstance(record.get("epoch"), int)
                and not isinstance(record["epoch"], bool)):
            continue
        if upto_epoch is None or record["epoch"] <= upto_epoch:
            problem = metric_problem(record)
            if problem:
                raise InputError(f"{path} line {number}: {problem}; fix or remove the line (epoch "
                                 f"{record['epoch']}) and the run's numbers can be read")
            records[record["epoch"]] = record
    return sorted(records.values(), key=lambda r: r["epoch"])


def _write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` whole, atomically: never a torn line."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


@dataclass
class Run:
    """What one training run is made of, whatever the task.

    ``objective(train_net, inputs, target) -> (loss, logits | None)`` turns a batch into a loss
    (:class:`~biasloss.train.engine.Objective`); ``criterion`` holds the loss's state (the
    checkpoint's ``"loss"``). ``validate()`` returns the epoch's validation metrics, of which
    ``score`` (higher is better) picks ``best.pt``; ``describe(metrics)`` words them for the
    epoch's line. ``extra`` goes into every checkpoint as it is (the run's arguments, ...).
    ``train_stats()``, when given, adds what the task measured of the epoch's training (the Bias
    Loss weights) to its ``metrics.jsonl`` line.
    """

    out: Path
    info: DistInfo
    device: torch.device
    model: nn.Module
    train_net: nn.Module
    objective: Objective
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: Any  # len(), set_epoch(epoch), num_samples; yields (inputs, target)
    validate: Callable[[], dict[str, Any]]
    describe: Callable[[dict[str, Any]], str]
    score: str
    epochs: int
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    ema: ModelEma | None = None
    progress: bool | None = None
    train_stats: Callable[[], dict[str, Any]] | None = None  # after each epoch's training, on every rank

    @property
    def best_key(self) -> str:
        """The checkpoint key of the best score so far: ``best_top1`` for ``val_top1``, ``best_map`` for ``map``."""
        return "best_" + self.score.removeprefix("val_")

    def log(self, message: str) -> None:
        if self.info.is_main:
            print(message, flush=True)

    def state(self, epoch: int, step: int, best: float, metrics: dict[str, Any] | None) -> dict[str, Any]:
        """The checkpoint of the run at ``step`` of ``epoch`` (step 0: the epoch is complete)."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "eval_weights": "ema" if self.ema is not None else "model",
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "loss": self.criterion.state_dict(),
            "epoch": epoch,
            "step": step,
            self.best_key: best,
            "metrics": metrics,
            "version": biasloss.__version__,
            **self.extra,
        }


@dataclass(frozen=True)
class Start:
    """Where :func:`fit` starts: ``step`` batches into ``epoch``, the best score so far, and the
    interrupted epoch's running sums (``EpochResult.totals``)."""

    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    totals: list[float] | None = None


def resume(run: Run, ckpt: dict[str, Any], path: str) -> Start:
    """Load ``ckpt`` into ``run``; returns where to continue, and starts the run's
    ``metrics.jsonl`` with the resumed run's lines up to that epoch (whether it continues in its
    own directory or in a new one)."""
    try:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.criterion.load_state_dict(ckpt["loss"])
        if run.ema is not None:
            run.ema.load_state_dict(ckpt["ema"])
        if run.scaler is not None and ckpt.get("scaler"):
            run.scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot resume from {path}: {one_line(e)}") from None
    epoch, step = ckpt["epoch"], ckpt.get("step", 0)
    if run.info.is_main:
        _write_metrics(run.out / "metrics.jsonl", read_metrics(Path(path).parent / "metrics.jsonl", epoch))
    run.log(f"resumed from {path} at epoch {epoch}" + (f", step {step}" if step else ""))
    return Start(epoch, step, ckpt.get(run.best_key, -math.inf), ckpt.get("epoch_totals") if step else None)


def train_task(build: Callable[[DistInfo, torch.device, contextlib.ExitStack], Run], *, device: str | None,
               ckpt: dict[str, Any] | None = None, resume_from: str | None = None,
               stop_after: int | None = None) -> dict[str, Any]:
    """Run a task's training from start to end: join torchrun's process group, catch Ctrl-C /
    SIGTERM (:class:`StopFlag`), ``build(info, device, cleanup)`` the :class:`Run`, resume it from
    ``ckpt`` (read from ``resume_from``) when given, and :func:`fit` it up to epoch ``stop_after``
    (default: all). Returns the last epoch's metrics."""
    info, dev = init_distributed(device)
    try:
        with contextlib.ExitStack() as cleanup:
            stop = cleanup.enter_context(StopFlag())
            run = build(info, dev, cleanup)
            start = resume(run, ckpt, resume_from or "checkpoint") if ckpt is not None else Start()
            return fit(run, stop, start, min(run.epochs, stop_after) if stop_after else run.epochs)
    finally:
        cleanup_distributed()


def _interrupted(stop: StopFlag, checkpoint: Path) -> TrainingInterrupted:
    """What :func:`fit` raises when ``stop`` ended the training after writing ``checkpoint``."""
    by = signal.Signals(stop.signum).name if stop.signum is not None else "a stop request"
    return TrainingInterrupted(f"interrupted by {by}: wrote {checkpoint}", signum=stop.signum, checkpoint=checkpoint)


def fit(run: Run, stop: StopFlag, start: Start = Start(), last_epoch: int | None = None) -> dict[str, Any]:
    """Train ``run`` from ``start`` to ``last_epoch`` (default: all its epochs); returns the last
    epoch's metrics. When ``stop`` is requested, writes ``last.pt`` and raises
    :class:`~biasloss.errors.TrainingInterrupted` (on every rank)."""
    last_epoch = run.epochs if last_epoch is None else last_epoch
    metrics: dict[str, Any] = {}
    best = start.best
    for epoch in range(start.epoch, last_epoch):
        resumed = epoch == start.epoch
        run.train_loader.set_epoch(epoch)
        t0 = time.perf_counter()
        result = train_one_epoch(
            run.train_net, run.objective, run.optimizer, run.scheduler, run.train_loader, epoch=epoch,
            seed=run.seed, device=run.device, rank=run.info.rank, amp_dtype=run.amp_dtype, scaler=run.scaler,
            ema=run.ema, model=run.model, start_step=start.step if resumed else 0,
            start_totals=start.totals if resumed and run.info.is_main else None,
            should_stop=lambda: stop.requested, progress=run.progress,
        )
        if result.interrupted:
            if run.info.is_main:
                state = run.state(epoch, result.steps, best, None) | {"epoch_totals": result.totals}
                save_checkpoint(state, run.out / "last.pt")
            barrier()  # every rank leaves after last.pt is written
            if result.error is not None:  # a data file it cannot read: named, with where the run stands
                raise DatasetCorruptError(f"{one_line(result.error)} (wrote {run.out / 'last.pt'} at "
                                          f"epoch {epoch + 1}, step {result.steps})") from None
            run.log(f"interrupted at epoch {epoch + 1}, step {result.steps}: wrote {run.out / 'last.pt'}; "
                    f"continue with --resume {run.out / 'last.pt'}")
            raise _interrupted(stop, run.out / "last.pt")
        metrics = {"epoch": epoch + 1, "train_loss": round(result.loss, 6)}
        if result.top1 is not None:
            metrics["train_top1"] = round(result.top1, 4)
        if run.train_stats is not None:
            metrics |= run.train_stats()
        broadcast_buffers(run.model, run.ema)  # every rank evaluates the weights last.pt holds
        metrics |= run.validate()
        metrics |= {"lr": run.optimizer.param_groups[0]["lr"], "time_s": round(time.perf_counter() - t0, 3),
                    "train_s": round(result.time_s, 3), "train_img_s": round(result.throughput, 1)}
        improved = metrics[run.score] > best
        best = max(best, metrics[run.score])
        if run.info.is_main:  # the checkpoint first: the log never runs ahead of last.pt
            snapshot = run.state(epoch + 1, 0, best, metrics)
            save_checkpoint(snapshot, run.out / "last.pt")
            if improved:
                save_checkpoint(snapshot, run.out / "best.pt")
            log = run.out / "metrics.jsonl"
            _write_metrics(log, [*read_metrics(log, epoch), metrics])
        train = f"train loss {result.loss:.4f}" + (f" top1 {result.top1:.2f}" if result.top1 is not None else "")
        run.log(f"epoch {epoch + 1}/{run.epochs}  {train}  {run.describe(metrics)}  "
                f"{metrics['time_s']:.1f}s ({metrics['train_img_s']:.0f} img/s)")
        if any_rank([stop.requested], run.device)[0]:  # every rank stops here, or none
            barrier()
            run.log(f"stopped after epoch {epoch + 1}: resume with --resume {run.out / 'last.pt'}")
            raise _interrupted(stop, run.out / "last.pt")
    if last_epoch < run.epochs:
        run.log(f"stopped after epoch {last_epoch} of {run.epochs} (--stop-after): continue with --resume "
                f"{run.out / 'last.pt'}")
    elif math.isfinite(best):
        run.log(f"done: {run.epochs} epochs; best {run.score} {best:.2f} in {run.out / 'best.pt'}, the last epoch's "
                f"weights in {run.out / 'last.pt'}")
    return metrics
