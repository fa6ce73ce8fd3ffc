"""``biasloss reproduce``: the paper's loss comparisons (Tables 3 and 4) as grids of training runs.

Paper: "Bias Loss for Mobile Neural Networks", Abrahamyan et al., ICCV 2021: Table 4 (CIFAR-100,
five compact models x cross-entropy, focal loss and Bias Loss) and Table 3 (ImageNet ablation:
MobileNetV3-Large and SkipblockNet-M, cross-entropy against Bias Loss).

A grid is models x losses x seeds. Every run goes through the trainer (``biasloss train``'s
:func:`~biasloss.train.runner.run_train`, given a :class:`~biasloss.train.runner.TrainConfig`, in
this process, one after another) into
``<out>/runs/<model>-<loss>-s<seed>/``, so each run is an ordinary run directory (``metrics.jsonl``,
``last.pt``, ``best.pt``) that ``biasloss eval``, ``variance`` and ``plot curves`` understand.

Resumable: a run is *finished* when its ``last.pt`` holds the planned number of epochs (and no
partial epoch); finished runs are skipped, an unfinished run with a ``last.pt`` (Ctrl-C, a killed
job, ``train --stop-after``) continues with ``--resume``, and the others start. Interrupt a grid at
any time and start the same command again. A run directory trained with other settings
(``--epochs``, whose schedule it followed, ``--limit``, ``--batch-size``, recipe, dataset, the loss
options ``--alpha --beta --scaling --clamp/--no-clamp --gamma --label-smoothing``) is an error,
never silently mixed in or stretched to a new schedule.

Records: each finished run also leaves ``<out>/records/<model>-<loss>-s<seed>.json`` (the train
command, versions, machine, seed, final and best top-1, its ``metrics.jsonl`` lines). A run with a
record and no run directory counts as finished, so a grid published without its checkpoints
(``docs/results/``: records, ``results.md`` and ``results.json`` in git, ``runs/`` ignored) is
continued by the same command on another machine, from the committed records.

What is reported (``<out>/results.md`` and ``<out>/results.json``, rewritten after every run):

- a run's accuracy: ``val_top1`` (top-1 % on the test split, the trainer's evaluation weights,
  EMA where the recipe has one) of the **last** epoch in its ``metrics.jsonl``, not the best
  epoch (picking the best epoch on the test split flatters every cell); the best is recorded too;
- per (model, loss): mean and sample standard deviation (``n - 1``) over seeds, and ``n``;
- per model: the paired difference ``bias - ce`` (and ``focal - ce``) seed by seed, its mean and a
  95 % Student-t interval ``mean +- t(0.975, n - 1) * sd / sqrt(n)`` (``n >= 2``; only seeds where
  both runs finished). Pairing by seed removes the seed-to-seed spread the two losses share
  (same initialisation and data order);
- the paper's numbers beside ours where the dataset is the paper's and the model maps to a row
  (Table 4 and the authors' README for CIFAR-100, Table 3 for ImageNet). The paper reports single
  runs of 200 (CIFAR-100) or ~350 (ImageNet) epochs, without intervals;
- with ``--variance``, Table 5's question (section 5.5): ``biasloss variance`` of every CE and Bias
  Loss run's final model (``last.pt``; the 5th, 20th and last conv layer, the test split), kept in
  the run's record, and per model and layer the CE and Bias Loss means of avg / max / min with the
  paired difference ``bias - ce`` and its interval, as for top-1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from biasloss._checks import positive_flags
from biasloss._io import atomic_write_text, writable_dir
from biasloss.errors import InputError
from biasloss.losses import LOSSES as LOSS_SPECS
from biasloss.train import runner
from biasloss.train.runner import DEFAULTS, TrainConfig, resume_conflict, trained_with

__all__ = [
    "GRIDS",
    "PAPER",
    "ABLATIONS",
    "GridSettings",
    "GridSpec",
    "Run",
    "aggregate",
    "format_markdown",
    "measure_variance",
    "mean_std",
    "paired_difference",
    "plan_grid",
    "read_run",
    "register",
    "run_ablation",
    "run_grid",
    "settings_from_args",
    "t_quantile_975",
]

#: every loss of the registry (:data:`biasloss.losses.LOSSES`); Table 4 compares the paper's three
LOSSES = tuple(LOSS_SPECS)
PAPER_LOSSES = ("ce", "focal", "bias")
#: loss options a grid can set: the losses' own (in the command's order) with the trainer's
#: defaults, and the label smoothing (default: the recipe's)
LOSS_OPTIONS: dict[str, Any] = {
    **{f.name: DEFAULTS[f.name] for f in fields(TrainConfig) if any(f.name in spec.options for spec in LOSS_SPECS.values())},
    "loss_scale": DEFAULTS["loss_scale"],  # one value, or one per seed ({seed: c}: the CE x c arm)
    "label_smoothing": None,
}
LOSS_NAMES = {loss: "CE" if loss == "ce" else loss for loss in LOSSES}
METRIC = ("val_top1 (top-1 % on the test split, the trainer's evaluation weights) of the last epoch in each "
          "run's metrics.jsonl")


# ---------------------------------------------------------------------------------------------
# The paper's numbers (its Tables 3 and 4)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaperRow:
    label: str
    source: str
    top1: Mapping[str, float]  # loss -> top-1 %


_T4 = "Table 4"
_README = "authors' README (their running-min scaling, cifar100-authors recipe)"
_T3 = "Table 3"
_SHUFFLENET = PaperRow("ShuffleNetV2 0.5x", _T4, {"ce": 69.5, "focal": 69.8, "bias": 71.0})
_MOBILENETV3 = PaperRow("MobileNetV3 Large 1.0x", _T3, {"ce": 75.2, "bias": 75.7})

#: dataset -> model name -> the paper's row.
PAPER: dict[str, dict[str, PaperRow]] = {
    "cifar100": {
        "cifar_shufflenetv2": _SHUFFLENET,  # the authors' "0.5x" (1.4M parameters), see the zoo
        "cifar_shufflenetv2_x0_5": _SHUFFLENET,
        "cifar_mobilenetv2_075": PaperRow("MobileNetV2 0.75x", _T4, {"ce": 68.0, "focal": 68.2, "bias": 68.6}),
        "cifar_nasnet_a": PaperRow("NASNet-A (N=4)", _T4, {"ce": 77.2, "focal": 77.5, "bias": 78.0}),
        "cifar_squeezenet": PaperRow("SqueezeNet", _T4, {"ce": 69.4, "focal": 69.8, "bias": 70.4}),
        "cifar_densenet_k12": PaperRow("DenseNet (k=12)", _T4, {"ce": 78.9, "focal": 79.5, "bias": 79.9}),
        "cifar_resnet18": PaperRow("ResNet18", _README, {"ce": 74.33, "bias": 75.51}),
        "cifar_densenet121": PaperRow("DenseNet121", _README, {"ce": 75.98, "bias": 77.83}),
    },
    "imagenet": {
        "mobilenetv3_large_100": _MOBILENETV3,
        "torchvision.mobilenet_v3_large": _MOBILENETV3,
        "skipblocknet_m": PaperRow("SkipblockNet-M", _T3, {"ce": 75.5, "bias": 76.2}),
    },
}


@dataclass(frozen=True)
class GridSpec:
    """Defaults of a named grid."""

    dataset: str | None
    models: tuple[str, ...]
    losses: tuple[str, ...]
    recipe: str | None


GRIDS: dict[str, GridSpec] = {
    "table4": GridSpec("cifar100", ("cifar_shufflenetv2", "cifar_mobilenetv2_075", "cifar_nasnet_a",
                                    "cifar_squeezenet", "cifar_densenet_k12"), PAPER_LOSSES, "cifar100"),
    "table3": GridSpec("imagenet", ("mobilenetv3_large_100", "skipblocknet_m"), ("ce", "bias"), "imagenet"),
    "grid": GridSpec(None, ("skipblocknet_xs",), LOSSES, None),
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


# ---------------------------------------------------------------------------------------------
# Statistics (no scipy)
# ---------------------------------------------------------------------------------------------

# Student t quantiles t(0.975, df) for df = 1..30.
_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
         2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
         2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
         2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
         2.045229642, 2.042272456)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (two-sided 95 %).

    Exact table for ``df <= 30``; above, the Cornish-Fisher expansion in ``1/df`` (error below
    1e-6 there)."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise InputError(f"degrees of freedom must be an int >= 1, got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``n - 1``); ``(None, None)`` for no values and
    ``(mean, None)`` for one."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def paired_difference(treatment: Mapping[int, float], baseline: Mapping[int, float]) -> dict[str, Any]:
    """``treatment - baseline`` seed by seed over the seeds both have: ``n``, ``seeds``,
    ``diffs``, ``mean``, ``std`` (n - 1), ``ci95`` (``[low, high]``, the t interval; ``None``
    for n < 2)."""
    seeds = sorted(set(treatment) & set(baseline))
    diffs = [treatment[s] - baseline[s] for s in seeds]
    mean, std = mean_std(diffs)
    ci = None
    if std is not None:
        half = t_quantile_975(len(diffs) - 1) * std / math.sqrt(len(diffs))
        ci = [mean - half, mean + half]
    return {"n": len(diffs), "seeds": seeds, "diffs": diffs, "mean": mean, "std": std, "ci95": ci}


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
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
        out = asdict(self)
        try:
            out["dir"] = str(self.dir.relative_to(root))
        except ValueError:
            out["dir"] = str(self.dir)
        return out


@dataclass
class GridSettings:
    """A grid (:func:`settings_from_args`): its runs, and what every run is trained with (``None``:
    the trainer's default)."""

    command: str
    dataset: str
    models: list[str]
    losses: list[str]
    seeds: list[int]
    recipe: str
    epochs: int  # planned
    batch_size: int | None = None
    limit: int | None = None
    data_dir: str | None = None
    device: str | None = None
    workers: int | None = None
    progress: bool | None = None
    # loss options (None: the trainer's default); the ablations of docs/results.md
    alpha: float | None = None
    beta: float | None = None
    scaling: str | None = None
    clamp: list[float] | str | None = None  # [low, high] or "none"
    gamma: float | None = None
    loss_scale: float | dict[int, float] | None = None  # {seed: c}: each seed its own multiplier
    label_smoothing: float | None = None
    variance: bool = False  # Table 5's measurement of every CE and Bias Loss run (not part of a run)

    def loss_options(self, seed: int | None = None) -> dict[str, Any]:
        """The loss options this grid sets (the others are the trainer's defaults), for ``seed``
        where an option is given per seed."""
        options = {k: getattr(self, k) for k in LOSS_OPTIONS if getattr(self, k) is not None}
        if isinstance(options.get("loss_scale"), dict):
            options["loss_scale"] = options["loss_scale"].get(seed, options["loss_scale"].get(str(seed)))
        return {k: v for k, v in options.items() if v is not None}

    def train_config(self, run: Run) -> TrainConfig:
        """What the trainer trains ``run`` with (resuming it when it has begun)."""
        return TrainConfig(dataset=self.dataset, model=run.model, loss=run.loss, seed=run.seed, recipe=self.recipe,
                           epochs=self.epochs, out=str(run.dir), batch_size=self.batch_size, limit=self.limit,
                           data_dir=self.data_dir, device=self.device, workers=self.workers,
                           progress=self.progress, resume=str(run.dir / "last.pt") if run.status == "resume" else None,
                           **self.loss_options(run.seed))


def _command(config: TrainConfig) -> str:
    """``biasloss train ...``: the command that trains ``config``, its options in a grid's order."""
    import shlex

    argv = ["train"]
    for key in ("dataset", "model", "loss", "seed", "recipe", "epochs", "out", "batch_size", "limit", "data_dir",
                "device", "workers", *LOSS_OPTIONS, "progress", "resume"):
        value, flag = getattr(config, key), "--" + key.replace("_", "-")
        if value is None:
            continue
        if key == "clamp":
            argv += ["--no-clamp"] if value == "none" else [flag, *map(str, value)]
        elif key == "progress":
            argv += [] if value else ["--no-progress"]
        else:
            argv += [flag, str(value)]
    return "biasloss " + " ".join(shlex.quote(a) for a in argv)


def read_run(run_dir: Path, planned_epochs: int) -> dict[str, Any] | None:
    """The final numbers of a finished run from its ``metrics.jsonl``: the line of the planned
    last epoch (``final_top1``/``final_top5``) and the best ``val_top1`` up to it; ``None`` if the
    file lacks that epoch."""
    from biasloss.train.loop import read_metrics

    lines = read_metrics(Path(run_dir) / "metrics.jsonl", planned_epochs)
    last = [line for line in lines if line["epoch"] == planned_epochs and "val_top1" in line]
    if not last:
        return None
    return {"final_top1": float(last[-1]["val_top1"]), "final_top5": last[-1].get("val_top5"),
            "best_top1": max(float(line["val_top1"]) for line in lines if "val_top1" in line)}


def _identity(run: Run, settings: GridSettings) -> dict[str, Any]:
    """What a run must have been trained with to count as this grid's run (effective values)."""
    from biasloss.train.recipes import get_recipe

    planned = get_recipe(settings.recipe)
    wanted = {"dataset": settings.dataset, "model": run.model, "loss": run.loss, "seed": run.seed,
              "recipe": settings.recipe, "limit": settings.limit,
              "batch_size": settings.batch_size or planned.batch_size, "epochs": settings.epochs}
    given = settings.loss_options(run.seed)
    for key, default in LOSS_OPTIONS.items():
        value = given.get(key)
        wanted[key] = value if value is not None else (planned.label_smoothing if key == "label_smoothing" else default)
    return wanted


def _check_identity(where: Path, have: Mapping[str, Any], run: Run, settings: GridSettings) -> None:
    """Refuse a run directory or record trained with other settings than the grid's: ``have`` is
    what it was trained with (:func:`~biasloss.train.runner.trained_with`, a record's identity)."""
    have = {"loss_scale": DEFAULTS["loss_scale"], **have}  # records from before --loss-scale
    conflict = resume_conflict(have, _identity(run, settings))
    if conflict:
        raise InputError(f"{where} was trained with {conflict}: use another --out, or delete that run")


def _inspect(run: Run, settings: GridSettings, out: Path) -> None:
    """Set ``run.status`` (new / resume / finished) and, when finished, its numbers: from the run
    directory when it is there, else from the run's record (``<out>/records/<run>.json``, what a
    published grid keeps once its run directories are gone)."""
    from biasloss.train.checkpoint import load_checkpoint

    last = run.dir / "last.pt"
    if not last.exists():
        record = read_record(_record_path(run, out))
        if record is None:
            run.status = "new"
            return
        _check_identity(_record_path(run, out), record["identity"], run, settings)
        run.status, run.epochs_done = "finished", settings.epochs
        run.final_top1, run.final_top5, run.best_top1 = (record["final_top1"], record["final_top5"],
                                                         record["best_top1"])
        return
    ckpt = load_checkpoint(last)
    _check_identity(run.dir, trained_with(ckpt), run, settings)
    epoch, step = int(ckpt["epoch"]), int(ckpt.get("step") or 0)
    run.epochs_done = epoch
    if epoch < settings.epochs or step:
        run.status = "resume"
        return
    numbers = read_run(run.dir, settings.epochs)
    if numbers is None:  # metrics.jsonl lost: last.pt holds the last epoch's metrics too
        metrics = ckpt.get("metrics") or {}
        if "val_top1" not in metrics:
            raise InputError(f"{run.dir}: no metrics for epoch {epoch} in metrics.jsonl or last.pt")
        from biasloss.train.loop import metric_problem

        problem = metric_problem(metrics) if isinstance(metrics, dict) else "not a dict"
        if problem:
            raise InputError(f"{last}: the last epoch's metrics: {problem}")
        numbers = {"final_top1": float(metrics["val_top1"]), "final_top5": metrics.get("val_top5"),
                   "best_top1": float(ckpt.get("best_top1", metrics["val_top1"]))}
    run.status = "finished"
    run.final_top1, run.final_top5, run.best_top1 = (numbers["final_top1"], numbers["final_top5"],
                                                     numbers["best_top1"])
    if not _record_path(run, out).exists():
        _write_record(run, settings, out)


def plan_grid(settings: GridSettings, out: Path) -> list[Run]:
    """Every run of the grid, in order (model, loss, seed), with its status."""
    runs = [Run(m, loss, s, out / "runs" / f"{m}-{loss}-s{s}")
            for m in settings.models for loss in settings.losses for s in settings.seeds]
    for run in runs:
        _inspect(run, settings, out)
    return runs


# ---------------------------------------------------------------------------------------------
# Per-run records: what a published grid keeps (docs/results/), without checkpoints
# ---------------------------------------------------------------------------------------------


def _record_path(run: Run, out: Path) -> Path:
    return out / "records" / f"{run.name}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """A run's record (:func:`_write_record`), ``None`` if there is none.

    A record whose numbers cannot be trusted is refused (:class:`~biasloss.errors.InputError`
    naming the file): ``final_top1``/``best_top1`` not finite numbers, ``final_top5`` neither that
    nor ``null``, or a ``metrics`` line that :func:`biasloss.train.loop.metric_problem` refuses, as
    ``metrics.jsonl`` is read. A file that is not UTF-8 JSON is named too."""
    from biasloss.train.loop import metric_problem

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
        if value is None and key == "final_top5":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"{path}: {key!r} is {value!r}, not a finite number")
    lines = record.get("metrics", [])
    if not isinstance(lines, list):
        raise InputError(f"{path}: 'metrics' must be a list of epoch lines, got {type(lines).__name__}")
    for i, line in enumerate(lines):
        problem = metric_problem(line) if isinstance(line, dict) else f"a {type(line).__name__}, not an epoch line"
        if problem:
            raise InputError(f"{path}: metrics[{i}]: {problem}")
    return record


def _write_record(run: Run, settings: GridSettings, out: Path) -> None:
    """``<out>/records/<run>.json``: the command that trains the run, the versions, the seed,
    final and best top-1, and every ``metrics.jsonl`` line up to the planned last epoch; the
    versions, machine and git state (commit, dirty tree) of :func:`biasloss._provenance.environment`."""
    from biasloss._provenance import environment

    from biasloss.train.loop import read_metrics

    # as training reads it: a resumed epoch's line replaces the earlier one, a line with a NaN is refused
    lines = {line["epoch"]: line for line in read_metrics(run.dir / "metrics.jsonl", settings.epochs)}
    # the command without --resume, with the run directory relative to where the grid ran when
    # it lies below it (a record names no path of one machine)
    run_dir = Path(os.path.relpath(run.dir)) if run.dir.resolve().is_relative_to(Path.cwd()) else run.dir
    fresh = Run(run.model, run.loss, run.seed, run_dir)
    record = {
        "name": run.name,
        "command": _command(settings.train_config(fresh)),
        "identity": _identity(run, settings),
        "seed": run.seed,
        "final_top1": run.final_top1,
        "final_top5": run.final_top5,
        "best_top1": run.best_top1,
        "train_time_s": round(math.fsum(line.get("time_s", 0.0) for line in lines.values()), 1),
        **environment(),  # "versions", "machine", "git"
        "metrics": [lines[e] for e in sorted(lines)],
    }
    atomic_write_text(_record_path(run, out), json.dumps(record, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# Aggregation and the report
# ---------------------------------------------------------------------------------------------


def _paper_row(dataset: str, model: str) -> PaperRow | None:
    return PAPER.get(dataset, {}).get(model)


VARIANCE_LOSSES = ("ce", "bias")  # Table 5 compares these two
VARIANCE_STATS = ("avg", "max", "min")


def measure_variance(runs: Sequence[Run], settings: GridSettings, out: Path) -> None:
    """Table 5's measurement (:func:`biasloss.analysis.variance.checkpoint_variance`: 5th, 20th and
    last conv layer, test split) of every finished CE and Bias Loss run's ``last.pt``, added to
    the run's record once. A run whose record has it already is skipped, and so is one without a
    run directory (its checkpoint is gone: said so, the table has one seed fewer)."""
    from biasloss.analysis.variance import checkpoint_variance

    for run in runs:
        if run.status != "finished" or run.loss not in VARIANCE_LOSSES:
            continue
        path = _record_path(run, out)
        record = read_record(path)
        if record is None or "variance" in record:
            continue
        last = run.dir / "last.pt"
        if not last.is_file():
            print(f"{run.name}: no {last} to measure the feature variance of; left out", flush=True)
            continue
        result = checkpoint_variance(last, device=settings.device, data_dir=settings.data_dir)
        record["variance"] = {"samples": result.samples, "num_convs": result.num_convs,
                              "layers": [{"label": s.label, "name": s.name, **s.as_dict()} for s in result.layers]}
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")
        print(f"{run.name}: feature variance measured on {result.samples} test images", flush=True)


def variance_table(runs: Sequence[Run], settings: GridSettings, out: Path) -> list[dict[str, Any]]:
    """Rows per (model, layer, stat): CE and Bias Loss mean ± std over seeds and the paired
    difference bias - CE, from the records :func:`measure_variance` wrote; ``[]`` if none has it."""
    rows: list[dict[str, Any]] = []
    for model in settings.models:
        by_loss: dict[str, dict[int, list[dict[str, Any]]]] = {loss: {} for loss in VARIANCE_LOSSES}
        for run in runs:
            if run.model != model or run.loss not in VARIANCE_LOSSES or run.status != "finished":
                continue
            record = read_record(_record_path(run, out))
            if record and "variance" in record:
                by_loss[run.loss][run.seed] = record["variance"]["layers"]
        if not any(by_loss.values()):
            continue
        first = next(layers for values in by_loss.values() for layers in values.values())
        for k, layer in enumerate(first):
            for stat in VARIANCE_STATS:
                values = {loss: {seed: layers[k][stat] for seed, layers in seeds.items()}
                          for loss, seeds in by_loss.items()}
                cells = {loss: dict(zip(("mean", "std"), mean_std(list(v.values()))), n=len(v))
                         for loss, v in values.items()}
                rows.append({"model": model, "layer": layer["label"], "module": layer["name"], "stat": stat,
                             "cells": cells, "difference": paired_difference(values["bias"], values["ce"]),
                             "ratio": _paired_ratio(values["bias"], values["ce"])})
    return rows


def _paired_ratio(treatment: Mapping[int, float], baseline: Mapping[int, float]) -> dict[str, Any] | None:
    """``treatment / baseline`` seed by seed as a geometric mean with its 95 % interval: the paired
    difference of logarithms, exponentiated. Variances of one layer span orders of magnitude from
    seed to seed, so a ratio describes them better than a difference. ``None`` if a value is <= 0."""
    seeds = set(treatment) & set(baseline)
    if any(treatment[s] <= 0 or baseline[s] <= 0 for s in seeds):
        return None
    logs = paired_difference({s: math.log(treatment[s]) for s in seeds}, {s: math.log(baseline[s]) for s in seeds})
    if logs["mean"] is None:
        return None
    return {"n": logs["n"], "geomean": math.exp(logs["mean"]),
            "ci95": None if logs["ci95"] is None else [math.exp(v) for v in logs["ci95"]]}


def aggregate(runs: Sequence[Run], settings: GridSettings) -> dict[str, Any]:
    """Cells (mean, std, n per model and loss) and paired differences against ``ce``."""
    cells, differences = [], []
    for model in settings.models:
        paper = _paper_row(settings.dataset, model)
        by_loss: dict[str, dict[int, float]] = {}
        best_by_loss: dict[str, list[float]] = {}
        for loss in settings.losses:
            done = [r for r in runs if r.model == model and r.loss == loss and r.final_top1 is not None]
            by_loss[loss] = {r.seed: r.final_top1 for r in done}
            best_by_loss[loss] = [r.best_top1 for r in done if r.best_top1 is not None]
            mean, std = mean_std(list(by_loss[loss].values()))
            cells.append({"model": model, "loss": loss, "n": len(done), "seeds": sorted(by_loss[loss]),
                          "mean": mean, "std": std, "best_mean": mean_std(best_by_loss[loss])[0],
                          "paper": paper.top1.get(loss) if paper else None})
        if "ce" in by_loss:
            for loss in settings.losses:
                if loss == "ce":
                    continue
                diff = paired_difference(by_loss[loss], by_loss["ce"])
                paper_diff = None
                if paper and loss in paper.top1 and "ce" in paper.top1:
                    paper_diff = round(paper.top1[loss] - paper.top1["ce"], 4)
                differences.append({"model": model, "loss": loss, "baseline": "ce", **diff, "paper": paper_diff})
    return {"cells": cells, "differences": differences}


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _fmt_cell(cell: Mapping[str, Any], num: Callable[..., str] = _fmt) -> str:
    if not cell["n"]:
        return "–"
    if cell["std"] is None:
        return f"{num(cell['mean'])} (n=1)"
    return f"{num(cell['mean'])} ± {num(cell['std'])} (n={cell['n']})"


def _fmt_diff(diff: Mapping[str, Any], num: Callable[..., str] = _fmt) -> str:
    if not diff["n"]:
        return "–"
    if diff["ci95"] is None:
        return f"{num(diff['mean'], True)} (n=1)"
    low, high = diff["ci95"]
    return f"{num(diff['mean'], True)} [{num(low, True)}, {num(high, True)}] (n={diff['n']})"


def _paper_value(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.2f}".rstrip("0").rstrip(".") if signed else f"{x:g}"


def _training_line(s: Mapping[str, Any]) -> str:
    """"Dataset ..., recipe ..., N epochs[, batch B][, first L images]" of a grid's settings."""
    return (f"Dataset {s['dataset']}, recipe {s['recipe']}, {s['epochs']} epochs"
            + (f", batch {s['batch_size']}" if s.get("batch_size") else "")
            + (f", first {s['limit']} images (--limit)" if s.get("limit") else ""))


def format_markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: one row per model, our cells, the paired differences and the paper's numbers."""
    s = results["settings"]
    losses, models = s["losses"], s["models"]
    cells = {(c["model"], c["loss"]): c for c in results["cells"]}
    diffs = {(d["model"], d["loss"]): d for d in results["differences"]}
    diff_losses = [loss for loss in losses if loss != "ce" and "ce" in losses]
    rows = {m: _paper_row(s["dataset"], m) for m in models}
    with_paper = any(rows.values())
    title = {"table4": "Table 4 (CIFAR-100, loss comparison)", "table3": "Table 3 (ImageNet ablation)",
             "grid": "loss comparison grid"}[s["command"]]
    finished = sum(r["status"] == "finished" for r in results["runs"])
    lines = [
        f"# biasloss reproduce: {title}",
        "",
        _training_line(s)
        + "".join(f", {k.replace('_', ' ')} {'none' if v == 'none' else (' '.join(map(str, v)) if isinstance(v, list) else v)}"
                  for k, v in ((k, s.get(k)) for k in LOSS_OPTIONS) if v is not None)
        + f"; seeds {', '.join(map(str, s['seeds']))}; {finished} of {len(results['runs'])} runs finished.",
        "",
        f"Ours: top-1 % = {METRIC}; mean ± sample standard deviation (n - 1) over seeds. "
        "Differences: paired by seed (the same seed gives both losses the same initialisation and data "
        "order), mean [95 % Student-t interval] over the seeds where both runs finished.",
        "",
    ]
    header = ["model"] + [f"{LOSS_NAMES[loss]}" for loss in losses] + \
        [f"{LOSS_NAMES[loss]} − CE [95 % CI]" for loss in diff_losses]
    if with_paper:
        header += ["paper model"] + [f"paper {LOSS_NAMES[loss]}" for loss in losses] + \
            [f"paper {LOSS_NAMES[loss]} − CE" for loss in diff_losses]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in models:
        row = [f"`{m}`"] + [_fmt_cell(cells[(m, loss)]) for loss in losses] + \
            [_fmt_diff(diffs[(m, loss)]) for loss in diff_losses]
        if with_paper:
            paper = rows[m]
            row += [paper.label if paper else "–"]
            row += [_paper_value(paper.top1.get(loss)) if paper else "–" for loss in losses]
            row += [_paper_value(diffs[(m, loss)]["paper"], True) if paper else "–" for loss in diff_losses]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if with_paper:
        sources = sorted({r.source for r in rows.values() if r})
        lines.append("Paper: " + "; ".join(sources) + ". The paper reports single runs with the full "
                     "recipe (no seeds, no intervals); shorter or subsampled runs here are not expected to "
                     "reach its numbers, only to show the same sign of the difference.")
    else:
        lines.append(f"The paper reports no {s['dataset']} numbers. For reference its Bias Loss gains over "
                     "cross-entropy are +0.4 to +1.5 points on CIFAR-100 (Table 4) and +0.5 to +0.7 on "
                     "ImageNet (Table 3).")
    if results.get("variance"):
        lines += ["", *format_variance(results["variance"])]
    missing = [r["dir"] for r in results["runs"] if r["status"] != "finished"]
    if missing:
        lines.append("")
        lines.append(f"Not finished ({len(missing)}; run the same command again to continue): "
                     + ", ".join(missing) + ".")
    return "\n".join(lines) + "\n"


def _num(x: float | None, signed: bool = False) -> str:
    """Variances span orders of magnitude: three significant digits."""
    if x is None:
        return "–"
    return f"{x:+.3g}" if signed else f"{x:.3g}"


def format_variance(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: Table 5's question, one row per model, layer and statistic."""
    lines = ["## Per-sample feature variance (Table 5's question)", "",
             "Per-sample unbiased variance of a layer's output map over the test split, for each CE and Bias "
             "Loss run's final model (`biasloss variance`); avg / max / min over the images, then mean ± "
             "std over seeds; bias − CE paired by seed, and bias / CE paired by seed as a geometric mean (the "
             "paired difference of logarithms: variances of one layer span orders of magnitude from seed to "
             "seed), each with its 95 % t interval.", "",
             "| model | layer | stat | CE | bias | bias − CE [95 % CI] | bias / CE [95 % CI] |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        text = {loss: _fmt_cell(row["cells"][loss], _num) for loss in VARIANCE_LOSSES}
        d = _fmt_diff(row["difference"], _num)
        r = row.get("ratio")
        ratio = "–" if r is None else f"{r['geomean']:.2f}" + (
            "" if r["ci95"] is None else f" [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]")
        lines.append(f"| `{row['model']}` | {row['layer']} (`{row['module']}`) | {row['stat']} | {text['ce']} | "
                     f"{text['bias']} | {d} | {ratio} |")
    return lines


def _write_results(runs: Sequence[Run], settings: GridSettings, out: Path) -> dict[str, Any]:
    results = {
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("device", "workers", "progress", "variance")},
        "metric": METRIC,
        "runs": [r.record(out) for r in runs],
        **aggregate(runs, settings),
    }
    variance = variance_table(runs, settings, out)
    if variance:
        results["variance"] = variance
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", format_markdown(results))
    return results


# ---------------------------------------------------------------------------------------------
# Running the grid
# ---------------------------------------------------------------------------------------------


def run_grid(settings: GridSettings, out: Path, *, dry_run: bool = False) -> dict[str, Any] | None:
    """Train every unfinished run, then write ``results.md``/``results.json``; returns the results
    (``None`` for a dry run, which only prints the plan)."""
    from biasloss.train.checkpoint import CheckpointError

    runs = plan_grid(settings, out)
    todo = [r for r in runs if r.status != "finished"]
    print(f"biasloss reproduce {settings.command}: {len(runs)} runs ({len(settings.models)} models x "
          f"{len(settings.losses)} losses x {len(settings.seeds)} seeds) on {settings.dataset}, "
          f"{settings.epochs} epochs each; {len(runs) - len(todo)} finished, {len(todo)} to train; out {out}",
          flush=True)
    if dry_run:
        for i, run in enumerate(runs, 1):
            what = {"new": "to train", "resume": f"to resume at epoch {run.epochs_done}",
                    "finished": f"finished, top-1 {run.final_top1:.2f}" if run.final_top1 is not None else ""}
            print(f"[{i}/{len(runs)}] {run.name}: {what[run.status]}")
        return None
    for i, run in enumerate(runs, 1):
        if run.status == "finished":
            print(f"[{i}/{len(runs)}] {run.name}: finished (top-1 {run.final_top1:.2f}), skipped", flush=True)
            continue
        how = "resuming at epoch " + str(run.epochs_done) if run.status == "resume" else "training"
        print(f"[{i}/{len(runs)}] {run.name}: {how}", flush=True)
        try:
            runner.run_train(settings.train_config(run))
        except CheckpointError as e:
            raise CheckpointError(f"{run.name}: {str(e).splitlines()[0]}") from None
        _inspect(run, settings, out)
        if run.status != "finished":
            raise RuntimeError(f"{run.name}: the trainer returned before epoch {settings.epochs}")
        _write_results(runs, settings, out)
    if settings.variance:
        measure_variance(runs, settings, out)
    results = _write_results(runs, settings, out)
    return results


def run_ablation(settings: GridSettings, out: Path, *, baseline: Path | None = None,
                 dry_run: bool = False, variants: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Ablations (:data:`ABLATIONS`, by default those not in :data:`BEYOND_PAPER`) of one model: each a
    grid in ``<out>/<name>/`` (Bias Loss runs, or the variant's ``loss``), against the paper's
    default Bias Loss and cross-entropy of the same seeds. Those come from ``baseline`` (a
    finished ``reproduce grid`` of the same model, dataset and epochs; never trained into) or else
    are trained in ``<out>/default/`` (with ``settings.variance``, Table 5's measurement of them).
    ``loss_scale "paired"`` (the CE x c arm) gives each seed c = :func:`mean_weight` of the
    default Bias Loss run of that seed. Writes ``<out>/results.md`` and ``results.json``: per
    variant the mean ± std top-1, its paired differences against the default Bias Loss and
    against cross-entropy, per-class top-1 and the Bias Loss weights the runs trained with."""
    settings = replace(settings, command="grid")  # each part is an ordinary grid
    base = replace(settings, losses=["ce", "bias"], variance=settings.variance and baseline is None)
    if baseline is not None:
        runs = plan_grid(base, baseline)
        missing = [r.name for r in runs if r.status != "finished"]
        if missing:
            raise InputError(f"--baseline {str(baseline)!r} lacks finished runs {', '.join(missing)}: finish them "
                             "with 'biasloss reproduce grid ... --losses ce bias', or leave out --baseline to "
                             "train them here")
        base_runs: list[Run] | None = runs
    else:
        run_grid(base, out / "default", dry_run=dry_run)
        base_runs = None if dry_run else plan_grid(base, out / "default")
    where = baseline if baseline is not None else out / "default"
    trained: dict[str, list[Run]] = {}
    for name in variants or [n for n in ABLATIONS if n not in BEYOND_PAPER]:
        options = dict(ABLATIONS[name])
        loss = options.pop("loss", "bias")
        if options.get("loss_scale") == "paired":
            if base_runs is None:  # a dry run before the default runs exist
                print(f"{name}: c from each seed's default Bias Loss run, once trained", flush=True)
                continue
            options["loss_scale"] = {r.seed: mean_weight(_record_path(r, where))
                                     for r in base_runs if r.loss == "bias"}
        variant = replace(settings, losses=[loss], variance=False, **options)
        if dry_run:
            run_grid(variant, out / name, dry_run=True)
            continue
        run_grid(variant, out / name)
        trained[name] = plan_grid(variant, out / name)
    if dry_run or base_runs is None:
        return None
    results = _ablation_results(settings, base_runs, trained, out, baseline)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", format_ablation(results))
    return results


def mean_weight(record_path: Path) -> float:
    """c of the CE x c arm: the mean Bias Loss weight of a run over its whole training, the mean
    of its epochs' ``z_mean`` (every epoch weighs the same number of images), rounded to 4
    decimals (the value the CE x c run's identity and command carry)."""
    record = read_record(record_path)
    means = [line["z_mean"] for line in (record or {}).get("metrics", []) if "z_mean" in line]
    if not means:
        raise InputError(f"{record_path}: no Bias Loss weights logged (z_mean); c of the CE x c arm needs a Bias "
                         "Loss run trained by a biasloss that logs them")
    return round(math.fsum(means) / len(means), 4)


#: The weight statistics an ablation reports, per run the mean over its epochs (z_mean ... of metrics.jsonl).
WEIGHT_STATS = ("z_mean", "z_std", "z_p01", "z_p10", "z_p50", "z_p90", "z_p99", "z_near_min", "z_at_low", "z_at_high")


def _ablation_results(settings: GridSettings, base_runs: Sequence[Run], variants: Mapping[str, Sequence[Run]],
                      out: Path, baseline: Path | None) -> dict[str, Any]:
    def top1(runs: Sequence[Run], loss: str = "bias") -> dict[int, float]:
        return {r.seed: r.final_top1 for r in runs if r.loss == loss and r.final_top1 is not None}

    def records(runs: Sequence[Run], where: Path, loss: str) -> dict[int, dict[str, Any]]:
        found = {r.seed: read_record(_record_path(r, where)) for r in runs if r.loss == loss}
        return {seed: record for seed, record in found.items() if record}

    where = baseline if baseline is not None else out / "default"
    ce, default = top1(base_runs, "ce"), top1(base_runs)
    ce_classes = _class_top1(records(base_runs, where, "ce"))
    rows = []
    for name, loss, options, runs, root in [("ce (cross-entropy)", "ce", {}, base_runs, where),
                                            ("default Bias Loss", "bias", {}, base_runs, where),
                                            *((n, ABLATIONS[n].get("loss", "bias"), ABLATIONS[n], v, out / n)
                                              for n, v in variants.items())]:
        values = top1(runs, loss)
        mean, std = mean_std(list(values.values()))
        found = records(runs, root, loss)
        times = [r.get("train_time_s") for r in found.values() if r.get("train_time_s") is not None]
        classes = _class_top1(found)
        options = {k: v for k, v in options.items() if k != "loss"}
        if options.get("loss_scale") == "paired":
            options["loss_scale"] = {seed: r["identity"].get("loss_scale") for seed, r in sorted(found.items())}
        rows.append({"name": name, "loss": loss, "options": options, "n": len(values), "seeds": sorted(values),
                     "mean": mean, "std": std, "train_time_s": mean_std(times)[0],
                     "vs_default": None if name == "default Bias Loss" or name.startswith("ce (")
                     else paired_difference(values, default),
                     "vs_ce": None if name.startswith("ce (") else paired_difference(values, ce),
                     "last_two": _last_two(found),
                     "weights": _weight_summary(found),
                     "class_top1": {str(k): mean_std(list(v.values()))[0] for k, v in classes.items()},
                     "class_vs_ce": None if name.startswith("ce (") else
                     {str(k): paired_difference(v, ce_classes.get(k, {})) for k, v in classes.items()}})
    results = {"settings": {k: v for k, v in asdict(settings).items()
                            if k not in ("device", "workers", "progress", "variance", "losses")},
               "metric": METRIC, "baseline": str(where), "rows": rows}
    variance = variance_table(base_runs, replace(settings, losses=["ce", "bias"]), where)
    if variance:
        results["variance"] = variance
    return results


def _class_top1(records: Mapping[int, Mapping[str, Any]]) -> dict[int, dict[int, float]]:
    """class -> seed -> the last epoch's top-1 % of that class (``val_class_top1``), where logged."""
    classes: dict[int, dict[int, float]] = {}
    for seed, record in records.items():
        last = record["metrics"][-1] if record.get("metrics") else {}
        for k, value in enumerate(last.get("val_class_top1") or []):
            classes.setdefault(k, {})[seed] = value
    return classes


def _last_two(records: Mapping[int, Mapping[str, Any]]) -> dict[str, Any] | None:
    """Mean top-1 of the last two epochs over seeds, and their difference (did it level off?)."""
    pairs = [[line["val_top1"] for line in r["metrics"][-2:]] for r in records.values() if len(r["metrics"]) >= 2]
    if not pairs:
        return None
    before, last = (mean_std([p[i] for p in pairs])[0] for i in (0, 1))
    return {"before": before, "last": last, "change": last - before,
            "per_seed": [round(p[1] - p[0], 4) for p in pairs]}


def _weight_summary(records: Mapping[int, Mapping[str, Any]]) -> dict[str, Any] | None:
    """Per weight statistic (:data:`WEIGHT_STATS`): the mean over seeds of each run's mean over its
    epochs; ``None`` for runs that logged none (cross-entropy)."""
    per_run = []
    for record in records.values():
        lines = [line for line in record["metrics"] if "z_mean" in line]
        if lines:
            per_run.append({k: math.fsum(line[k] for line in lines) / len(lines) for k in WEIGHT_STATS
                            if all(k in line for line in lines)})
    if not per_run:
        return None
    return {k: mean_std([r[k] for r in per_run if k in r])[0] for k in WEIGHT_STATS if any(k in r for r in per_run)}


def format_ablation(results: Mapping[str, Any]) -> str:
    """``results.md`` of ``reproduce ablation``."""
    s = results["settings"]
    lines = [
        f"# biasloss reproduce: ablations of `{', '.join(s['models'])}`",
        "",
        _training_line(s)
        + f"; seeds {', '.join(map(str, s['seeds']))}. Each variant changes the paper's defaults (alpha = beta "
        "= 0.3, batch min-max scaling, weights clamped to [0.5, 1.5], no label smoothing) in the options "
        f"shown; the default Bias Loss and cross-entropy runs are those of `{results['baseline']}`.",
        "",
        f"Top-1 % = {METRIC}; mean ± sample standard deviation over seeds. Differences paired by seed, "
        "mean [95 % Student-t interval].",
        "",
        "| variant | options | top-1 | − default bias [95 % CI] | − CE [95 % CI] | last two epochs | train time a run |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        options = ", ".join(f"{k.replace('_', ' ')} {_option_text(v)}" for k, v in row["options"].items()) or "–"
        cell = _fmt_cell(row)
        vs_default = "–" if row["vs_default"] is None else _fmt_diff(row["vs_default"])
        vs_ce = "–" if row["vs_ce"] is None else _fmt_diff(row["vs_ce"])
        seconds = "–" if row["train_time_s"] is None else f"{row['train_time_s']:.0f} s"
        two = row.get("last_two")
        levelled = "–" if not two else f"{two['before']:.2f} → {two['last']:.2f} ({two['change']:+.2f})"
        lines.append(f"| {row['name']} | {options} | {cell} | {vs_default} | {vs_ce} | {levelled} | {seconds} |")
    weighted = [row for row in results["rows"] if row.get("weights")]
    if weighted:
        stats = [k for k in WEIGHT_STATS if any(k in row["weights"] for row in weighted)]
        lines += ["", "## The weights z the Bias Loss runs trained with", "",
                  "From every training batch as the loss saw it (`metrics.jsonl`), per run the mean over its "
                  "epochs, then the mean over seeds. near_min: the fraction within 0.01 of its batch's lowest "
                  "weight; at_low / at_high: at the clamp's bounds.", "",
                  "| variant | " + " | ".join(k.removeprefix("z_") for k in stats) + " |",
                  "|---|" + "---|" * len(stats)]
        for row in weighted:
            lines.append(f"| {row['name']} | " + " | ".join(
                f"{row['weights'][k]:.3f}" if k in row["weights"] else "–" for k in stats) + " |")
    with_classes = [row for row in results["rows"] if row.get("class_top1")]
    if with_classes:
        classes = sorted(with_classes[0]["class_top1"], key=int)
        lines += ["", "## Per-class top-1 of the last epoch", "",
                  "Mean over seeds; below each variant's row, its paired difference from cross-entropy "
                  "(bold: the 95 % interval excludes 0; ten classes, so about one in two rows of ten may show "
                  "a bold cell by chance at the 5 % level).", "",
                  "| variant | " + " | ".join(f"class {k}" for k in classes) + " |",
                  "|---|" + "---|" * len(classes)]
        for row in with_classes:
            lines.append(f"| {row['name']} | " + " | ".join(_fmt(row["class_top1"].get(k)) for k in classes) + " |")
            if row.get("class_vs_ce"):
                lines.append("| − CE [95 % CI] | " + " | ".join(_short_diff(row["class_vs_ce"].get(k)) for k in classes)
                             + " |")
    if results.get("variance"):
        lines += ["", *format_variance(results["variance"])]
    return "\n".join(lines) + "\n"


def _short_diff(diff: Mapping[str, Any] | None) -> str:
    """A paired difference in a narrow cell: mean and interval, one decimal, bold when it excludes 0."""
    if not diff or not diff["n"]:
        return "–"
    if diff["ci95"] is None:
        return f"{diff['mean']:+.1f}"
    low, high = diff["ci95"]
    text = f"{diff['mean']:+.1f} [{low:+.1f}, {high:+.1f}]"
    return f"**{text}**" if low > 0 or high < 0 else text


def _option_text(value: Any) -> str:
    if isinstance(value, dict):
        return "c per seed: " + ", ".join(f"s{seed} {c}" for seed, c in value.items())
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _model_name(name: str, command: str) -> str:
    from biasloss.models import is_model, unknown_model_error

    if is_model(name):
        return name
    if command == "table4" and is_model(f"cifar_{name}"):
        return f"cifar_{name}"  # "shufflenetv2" -> the zoo's cifar_shufflenetv2
    raise unknown_model_error(name)


def _unique(values: Sequence[Any], what: str) -> list[Any]:
    if len(set(values)) != len(values):
        raise InputError(f"{what} lists a value twice: {' '.join(map(str, values))}")
    return list(values)


def settings_from_args(args: argparse.Namespace) -> GridSettings:
    """Validate the command line and fill in the grid's defaults."""
    from biasloss.data import get_dataset_spec
    from biasloss.train.recipes import default_recipe, get_recipe

    grid = GRIDS[args.grid]
    positive_flags(vars(args), ("epochs", "batch_size", "limit", "num_seeds", "workers"))
    if args.seeds is not None and args.num_seeds is not None:
        raise InputError("give --seeds or --num-seeds, not both")
    seeds = args.seeds if args.seeds is not None else list(range(args.num_seeds or 3))
    if any(s < 0 for s in seeds):
        raise InputError(f"--seeds must be >= 0, got {' '.join(map(str, seeds))}")
    seeds = _unique(seeds, "--seeds")
    dataset = args.dataset or grid.dataset or DEFAULTS["dataset"]
    get_dataset_spec(dataset)
    recipe = get_recipe(args.recipe) if args.recipe else (
        get_recipe(grid.recipe) if grid.recipe else default_recipe(dataset))
    losses = _unique(args.losses or list(grid.losses), "--losses")
    models = _unique([_model_name(m, args.grid) for m in (args.models or grid.models)], "--models")
    return GridSettings(
        command=args.grid, dataset=dataset, models=models, losses=losses, seeds=seeds, recipe=recipe.name,
        epochs=args.epochs or recipe.epochs, batch_size=args.batch_size, limit=args.limit,
        data_dir=args.data_dir, device=args.device, workers=args.workers, progress=args.progress,
        **{key: getattr(args, key, None) for key in LOSS_OPTIONS}, variance=bool(getattr(args, "variance", False)),
    )


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / f"reproduce-{args.grid}-{settings.dataset}"
    if not args.dry_run:
        writable_dir(out)
    elif out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file; give a directory")
    if args.grid == "ablation":
        if len(settings.models) != 1:
            raise InputError("reproduce ablation takes one model (--models NAME)")
        given = [f"--{k.replace('_', '-')}" for k in LOSS_OPTIONS if getattr(args, k, None) is not None]
        given += ["--losses"] * bool(args.losses) + ["--variance"] * bool(args.variance and args.baseline)
        if given:
            raise InputError(f"reproduce ablation sets the losses and loss options itself; leave out {' '.join(given)}")
        baseline = Path(args.baseline) if args.baseline else None
        variants = _unique(args.variants, "--variants") if args.variants else None
        ablation = run_ablation(settings, out, baseline=baseline, dry_run=args.dry_run, variants=variants)
        if ablation is not None:
            print(format_ablation(ablation), end="")
            print(f"wrote {out / 'results.md'} and {out / 'results.json'}", file=sys.stderr)
        return 0
    if args.baseline or args.variants:
        raise InputError("--baseline and --variants are for reproduce ablation")
    results = run_grid(settings, out, dry_run=args.dry_run)
    if results is not None:
        print(format_markdown(results), end="")
        print(f"wrote {out / 'results.md'} and {out / 'results.json'}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``biasloss reproduce`` to the CLI."""
    from biasloss.train.train_cli import add_runtime_flags

    p = subparsers.add_parser(
        "reproduce",
        description="Train every model with every loss and seed (sequentially, resumable: run the same "
                    "command again to continue), then write results.md and results.json: mean ± std of the "
                    "last epoch's test top-1 per cell, the paired difference bias - CE with a 95 % t "
                    "interval over seeds, and the paper's numbers. table4: CIFAR-100 zoo x ce/focal/bias; "
                    "table3: MobileNetV3-Large and SkipblockNet-M on ImageNet x ce/bias; grid: any dataset "
                    "(default fashion-mnist); ablation: the Bias Loss variants (running_min scaling, no clamp, "
                    "alpha x beta, label smoothing) of one model against its default Bias Loss and CE.",
    )
    p.add_argument("grid", choices=tuple(GRIDS), metavar="{" + ",".join(GRIDS) + "}",
                   help="which grid: table4, table3, grid (models x losses of your choice) or ablation")
    p.add_argument("--dataset", help="table4: cifar100, table3: imagenet, grid: fashion-mnist (defaults)")
    p.add_argument("--data-dir")
    p.add_argument("--models", nargs="+", metavar="MODEL",
                   help="model names (table4 also takes the zoo's short names: shufflenetv2 ...)")
    p.add_argument("--losses", nargs="+", choices=LOSSES, metavar="LOSS",
                   help=f"{' '.join(LOSSES)} (default: the table's)")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="seeds (default 0 1 2)")
    p.add_argument("--num-seeds", type=int, metavar="N", help="seeds 0..N-1")
    p.add_argument("--epochs", type=int, help="default: the recipe's (200 for cifar100, 350 for imagenet)")
    p.add_argument("--batch-size", type=int, help="default: the recipe's")
    p.add_argument("--limit", type=int, help="use only the first N train and test images (smoke runs)")
    p.add_argument("--recipe", help="default: the table's (cifar100, imagenet) or the dataset's")
    p.add_argument("--alpha", type=float, help="Bias Loss alpha (default 0.3)")
    p.add_argument("--beta", type=float, help="Bias Loss beta (default 0.3)")
    p.add_argument("--scaling", choices=("batch", "running_min", "rank"),
                   help="Bias Loss variance scaling (default batch; rank is ours, beyond the paper)")
    p.add_argument("--clamp", nargs=2, type=float, metavar=("LOW", "HIGH"), help="Bias Loss weight clamp (default 0.5 1.5)")
    p.add_argument("--no-clamp", dest="clamp", action="store_const", const="none", help="unclamped Bias Loss weights")
    p.add_argument("--gamma", type=float, help="focal loss gamma (default 2)")
    p.add_argument("--loss-scale", type=float, metavar="C", help="multiply every run's loss by C (default 1)")
    p.add_argument("--label-smoothing", type=float, help="default: the recipe's")
    p.add_argument("--out", help="directory for runs/, results.md, results.json "
                                 "(default runs/reproduce-<grid>-<dataset>)")
    add_runtime_flags(p)  # --device, --workers, --no-progress: train's
    p.add_argument("--variance", action="store_true",
                   help="also measure the feature variance (Table 5: 5th, 20th, last conv) of every CE and "
                        "bias run's final model into its record, and tabulate bias - CE (ablation: of the "
                        "default runs it trains)")
    p.add_argument("--baseline", metavar="DIR",
                   help="ablation: a finished grid of the same model whose CE and bias runs are the baseline "
                        "(default: trained in <out>/default)")
    p.add_argument("--variants", nargs="+", choices=tuple(ABLATIONS), metavar="NAME",
                   help=f"ablation: which variants ({' '.join(ABLATIONS)}; default: all but {' '.join(BEYOND_PAPER)}); "
                        "rank and ce-x-c (cross-entropy x the paired Bias Loss run's mean weight) are ours")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their state; train nothing")
    p.set_defaults(func=_run)
