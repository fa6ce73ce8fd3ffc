"""The runs of a ``biasloss reproduce`` grid: what to train, what is finished, what each run keeps.

A grid (:class:`GridSettings`; named defaults in :data:`GRIDS`, the Bias Loss ablations in
:data:`ABLATIONS`) is models x losses x seeds, and :func:`plan_grid` lays it out as :class:`GridRun`
cells in ``<out>/runs/<model>-<loss>-s<seed>/``, each an ordinary run directory of the trainer. A run
is *finished* when its ``last.pt`` holds the planned number of epochs (and no partial epoch): an
unfinished run with a ``last.pt`` (Ctrl-C, a killed job, ``train --stop-after``) continues with
``--resume`` and the others start, while a run directory trained with other settings (``--epochs``,
whose schedule it followed, ``--limit``, ``--batch-size``, recipe, dataset, the loss options) is an
error, never silently mixed in or stretched to a new schedule. Each finished run also leaves
``<out>/records/<model>-<loss>-s<seed>.json`` (the train command, versions, machine, seed, final and
best top-1, its ``metrics.jsonl`` lines); a run with a record and no run directory counts as
finished, so a grid published without its checkpoints (``docs/results/``) is continued by the same
command on another machine, from the committed records.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from biasloss._io import atomic_write_text
from biasloss._provenance import environment
from biasloss.errors import InputError
from biasloss.losses import LOSSES
from biasloss.train.saved_run import load_run
from biasloss.train.loop import metric_problem, read_metrics
from biasloss.train.recipes import get_recipe
from biasloss.train.runner import DEFAULTS, TrainConfig, resume_conflict
from biasloss.train.settings import to_argv

__all__ = ["ABLATIONS", "BEYOND_PAPER", "GRIDS", "GRID_LOSSES", "GRID_TRAIN_OPTIONS", "LOSS_OPTIONS", "VARIANCE_LOSSES",
           "GridRun", "GridSettings", "GridSpec", "inspect_run", "plan_grid", "read_record", "read_run", "record_path"]

#: every loss of the registry (:data:`biasloss.losses.LOSSES`)
GRID_LOSSES = tuple(LOSSES)
#: loss options a grid can set: the losses' own (in the command's order) with the trainer's
#: defaults, and the label smoothing (default: the recipe's)
LOSS_OPTIONS: dict[str, Any] = {
    **{f.name: DEFAULTS[f.name] for f in fields(TrainConfig) if any(f.name in s.options for s in LOSSES.values())},
    "loss_scale": DEFAULTS["loss_scale"],  # one value, or one per seed ({seed: c}: the CE x c arm)
    "label_smoothing": None,
}
VARIANCE_LOSSES = ("ce", "bias")  # Table 5 compares these two (``--variance``)


@dataclass(frozen=True)
class GridSpec:
    """Defaults of a named grid."""

    dataset: str | None
    models: tuple[str, ...]
    losses: tuple[str, ...]
    recipe: str | None


GRIDS: dict[str, GridSpec] = {
    "table4": GridSpec("cifar100", ("cifar_shufflenetv2", "cifar_mobilenetv2_075", "cifar_nasnet_a",
                                    "cifar_squeezenet", "cifar_densenet_k12"), ("ce", "focal", "bias"), "cifar100"),
    "table3": GridSpec("imagenet", ("mobilenetv3_large_100", "skipblocknet_m"), ("ce", "bias"), "imagenet"),
    "grid": GridSpec(None, ("skipblocknet_xs",), GRID_LOSSES, None),
    "ablation": GridSpec(None, ("skipblocknet_xs",), ("ce", "bias"), None),
}

#: The Bias Loss ablations of ``reproduce ablation`` (docs/results.md): each a grid of
#: Bias Loss runs that changes the paper's defaults (alpha = beta = 0.3, batch min-max scaling,
#: weights clamped to [0.5, 1.5], no label smoothing) in the options given.
ABLATIONS: dict[str, dict[str, Any]] = {
    "running_min": {"scaling": "running_min"},  # the authors' code's "global" scaling
    "no-clamp": {"clamp": "none"},
    "alpha0.1-beta0": {"alpha": 0.1, "beta": 0.0},
    "alpha0.1-beta0.3": {"alpha": 0.1, "beta": 0.3},
    "alpha0.3-beta0": {"alpha": 0.3, "beta": 0.0},
    "alpha1.0-beta0": {"alpha": 1.0, "beta": 0.0},
    "alpha1.0-beta0.3": {"alpha": 1.0, "beta": 0.3},
    "label-smoothing0.1": {"label_smoothing": 0.1},
    # the evidence grid's arms, beyond the paper's knobs (not in the default set):
    "rank": {"scaling": "rank"},  # ours, beyond the paper: each sample's rank of variance in the batch
    "ce-x-c": {"loss": "ce", "loss_scale": "paired"},  # CE x c, c = the paired Bias Loss run's mean weight
}
#: The variants of :data:`ABLATIONS` that ``reproduce ablation`` trains only when ``--variants`` names them.
BEYOND_PAPER = ("rank", "ce-x-c")


@dataclass
class GridRun:
    """One cell of the grid for one seed."""

    model: str
    loss: str
    seed: int
    dir: Path
    status: str = "new"  # new | resume | finished
    epochs_done: int = 0
    final_top1: float | None = None
    final_top5: float | None = None
    best_top1: float | None = None

    @property
    def name(self) -> str:
        return f"{self.model}-{self.loss}-s{self.seed}"

    def record(self, root: Path) -> dict[str, Any]:
        return {**asdict(self), "dir": str(self.dir.relative_to(root) if self.dir.is_relative_to(root) else self.dir)}


#: The options of ``biasloss train`` a grid sets for all its runs (``reproduce``'s flags); model,
#: loss, seed, out and resume are each run's own.
GRID_TRAIN_OPTIONS = ("dataset", "data_dir", "recipe", "epochs", "batch_size", "limit", *LOSS_OPTIONS, "device",
                      "workers", "progress")
#: What ``results.json`` keeps of a grid's settings, in this order.
RECORDED_SETTINGS = ("command", "dataset", "models", "losses", "seeds", "recipe", "epochs", "batch_size", "limit",
                     "data_dir", "device", "workers", "progress", *LOSS_OPTIONS, "variance")
#: The order of the options in a run's ``biasloss train`` command (its record's ``command``).
_COMMAND_ORDER = ("dataset", "model", "loss", "seed", "recipe", "epochs", "out", "batch_size", "limit", "data_dir",
                  "device", "workers", *LOSS_OPTIONS, "progress", "resume")


@dataclass
class GridSettings(TrainConfig):
    """A grid (:func:`~biasloss.analysis.reproduce.cli.settings_from_args`): the options of
    ``biasloss train`` every run of it is trained with (a :class:`~biasloss.train.settings.TrainConfig`
    whose :data:`GRID_TRAIN_OPTIONS` alone are set, ``None``: the trainer's default), and its
    models x losses x seeds."""

    command: str = "grid"
    models: list[str] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    loss_scale: float | dict[int, float] | None = None  # {seed: c}: each seed its own multiplier
    variance: bool = False  # Table 5's measurement of every CE and Bias Loss run (not part of a run)

    def loss_options(self, seed: int | None = None) -> dict[str, Any]:
        """The loss options this grid sets (the others are the trainer's defaults), for ``seed``
        where an option is given per seed."""
        options = {k: getattr(self, k) for k in LOSS_OPTIONS if getattr(self, k) is not None}
        if isinstance(options.get("loss_scale"), dict):
            options["loss_scale"] = options["loss_scale"].get(seed, options["loss_scale"].get(str(seed)))
        return {k: v for k, v in options.items() if v is not None}

    def recorded(self, *leave_out: str) -> dict[str, Any]:
        """The settings ``results.json`` keeps (:data:`RECORDED_SETTINGS`), but ``leave_out``."""
        return {k: copy.deepcopy(getattr(self, k)) for k in RECORDED_SETTINGS if k not in leave_out}

    def train_config(self, run: GridRun) -> TrainConfig:
        """What the trainer trains ``run`` with (resuming it when it has begun)."""
        shared = {k: getattr(self, k) for k in GRID_TRAIN_OPTIONS if k not in LOSS_OPTIONS}
        return TrainConfig(**shared, **self.loss_options(run.seed), model=run.model, loss=run.loss, seed=run.seed,
                           out=str(run.dir), resume=str(run.dir / "last.pt") if run.status == "resume" else None)


def read_run(run_dir: Path, planned_epochs: int) -> dict[str, Any] | None:
    """The final numbers of a finished run from its ``metrics.jsonl``: the line of the planned
    last epoch (``final_top1``/``final_top5``) and the best ``val_top1`` up to it; ``None`` if the
    file lacks that epoch."""
    lines = read_metrics(Path(run_dir) / "metrics.jsonl", planned_epochs)
    last = [line for line in lines if line["epoch"] == planned_epochs and "val_top1" in line]
    if not last:
        return None
    return {"final_top1": float(last[-1]["val_top1"]), "final_top5": last[-1].get("val_top5"),
            "best_top1": max(float(line["val_top1"]) for line in lines if "val_top1" in line)}


def _identity(run: GridRun, settings: GridSettings) -> dict[str, Any]:
    """What a run must have been trained with to count as this grid's run (effective values)."""
    planned = get_recipe(settings.recipe)
    wanted = {"dataset": settings.dataset, "model": run.model, "loss": run.loss, "seed": run.seed,
              "recipe": settings.recipe, "limit": settings.limit,
              "batch_size": settings.batch_size or planned.batch_size, "epochs": settings.epochs}
    given = settings.loss_options(run.seed)  # else the trainer's default; label smoothing: the recipe's
    defaults = {**LOSS_OPTIONS, "label_smoothing": planned.label_smoothing}
    return wanted | {key: given.get(key, default) for key, default in defaults.items()}


def _check_identity(where: Path, have: Mapping[str, Any], run: GridRun, settings: GridSettings) -> None:
    """Refuse a run directory or record trained with other settings than the grid's: ``have`` is
    what it was trained with (a run's settings, or a record's identity)."""
    have = {"loss_scale": DEFAULTS["loss_scale"], **have}  # records from before --loss-scale
    conflict = resume_conflict(have, _identity(run, settings))
    if conflict:
        raise InputError(f"{where} was trained with {conflict}: use another --out, or delete that run")


def inspect_run(run: GridRun, settings: GridSettings, out: Path) -> None:
    """Set ``run.status`` (new / resume / finished) and, when finished, its numbers: from the run directory
    when it is there, else from the run's record (what a published grid keeps once its run directories are gone)."""
    last, record_file = run.dir / "last.pt", record_path(run, out)
    if not last.exists():
        numbers = read_record(record_file)
        if numbers is None:
            run.status = "new"
            return
        _check_identity(record_file, numbers["identity"], run, settings)
        run.epochs_done = settings.epochs
    else:
        saved = load_run(last)
        ckpt = saved.checkpoint
        _check_identity(run.dir, asdict(saved.settings), run, settings)
        epoch = run.epochs_done = int(ckpt["epoch"])
        if int(ckpt.get("step") or 0) or epoch < settings.epochs:
            run.status = "resume"
            return
        numbers = read_run(run.dir, settings.epochs)
        if numbers is None:  # metrics.jsonl lost: last.pt holds the last epoch's metrics too
            metrics = ckpt.get("metrics") or {}
            if "val_top1" not in metrics:
                raise InputError(f"{run.dir}: no metrics for epoch {epoch} in metrics.jsonl or last.pt")
            problem = metric_problem(metrics) if isinstance(metrics, dict) else "not a dict"
            if problem:
                raise InputError(f"{last}: the last epoch's metrics: {problem}")
            numbers = {"final_top1": float(metrics["val_top1"]), "final_top5": metrics.get("val_top5"),
                       "best_top1": float(ckpt.get("best_top1", metrics["val_top1"]))}
    run.status = "finished"
    run.final_top1, run.final_top5, run.best_top1 = (numbers[k] for k in ("final_top1", "final_top5", "best_top1"))
    if not record_file.exists():
        _write_record(run, settings, out)


def plan_grid(settings: GridSettings, out: Path) -> list[GridRun]:
    """Every run of the grid, in order (model, loss, seed), with its status."""
    runs = [GridRun(m, loss, s, out / "runs" / f"{m}-{loss}-s{s}")
            for m in settings.models for loss in settings.losses for s in settings.seeds]
    for run in runs:
        inspect_run(run, settings, out)
    return runs


def record_path(run: GridRun, out: Path) -> Path:
    return out / "records" / f"{run.name}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """A run's record (:func:`_write_record`), ``None`` if there is none.

    A record whose numbers cannot be trusted is refused (:class:`~biasloss.errors.InputError`
    naming the file): ``final_top1``/``best_top1`` not finite numbers, ``final_top5`` neither that
    nor ``null``, or a ``metrics`` line that :func:`biasloss.train.loop.metric_problem` refuses, as
    ``metrics.jsonl`` is read. A file that is not UTF-8 JSON is named too."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))  # UnicodeDecodeError is a ValueError
        for key in ("identity", "final_top1", "final_top5", "best_top1"):
            record[key]  # noqa: B018  (presence)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a run record ({e})") from None
    for key in ("final_top1", "final_top5", "best_top1"):
        value = record[key]
        bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        if bad and not (value is None and key == "final_top5"):
            raise InputError(f"{path}: {key!r} is {value!r}, not a finite number")
    lines = record.get("metrics", [])
    if not isinstance(lines, list):
        raise InputError(f"{path}: 'metrics' must be a list of epoch lines, got {type(lines).__name__}")
    for i, line in enumerate(lines):
        problem = metric_problem(line) if isinstance(line, dict) else f"a {type(line).__name__}, not an epoch line"
        if problem:
            raise InputError(f"{path}: metrics[{i}]: {problem}")
    return record


def _write_record(run: GridRun, settings: GridSettings, out: Path) -> None:
    """``<out>/records/<run>.json``: the command that trains the run, the seed, final and best top-1, every
    ``metrics.jsonl`` line up to the planned last epoch, and :func:`biasloss._provenance.environment`
    (versions, machine, git state)."""
    # as training reads it: a resumed epoch's line replaces the earlier one, a line with a NaN is refused
    lines = {line["epoch"]: line for line in read_metrics(run.dir / "metrics.jsonl", settings.epochs)}
    # the command without --resume, with the run directory relative to where the grid ran when
    # it lies below it (a record names no path of one machine)
    run_dir = Path(os.path.relpath(run.dir)) if run.dir.resolve().is_relative_to(Path.cwd()) else run.dir
    fresh = GridRun(run.model, run.loss, run.seed, run_dir)
    record = {
        "name": run.name,
        "command": shlex.join(["biasloss", "train", *to_argv(settings.train_config(fresh), _COMMAND_ORDER)]),
        "identity": _identity(run, settings),
        "seed": run.seed,
        "final_top1": run.final_top1,
        "final_top5": run.final_top5,
        "best_top1": run.best_top1,
        "train_time_s": round(math.fsum(line.get("time_s", 0.0) for line in lines.values()), 1),
        **environment(),  # "versions", "machine", "git"
        "metrics": [lines[e] for e in sorted(lines)],
    }
    atomic_write_text(record_path(run, out), json.dumps(record, indent=1) + "\n")
