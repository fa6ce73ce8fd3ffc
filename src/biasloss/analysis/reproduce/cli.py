"""The ``biasloss reproduce`` command: its flags, their checks and defaults (the named grid's,
:data:`~biasloss.analysis.reproduce.runs.GRIDS`); it runs the grid or the ablation and prints its ``results.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biasloss._checks import positive_flags
from biasloss._io import writable_dir
from biasloss.analysis.reproduce.grid import run_ablation, run_grid
from biasloss.analysis.reproduce.report import format_ablation, format_markdown
from biasloss.analysis.reproduce.runs import (ABLATIONS, BEYOND_PAPER, GRID_LOSSES, GRID_TRAIN_OPTIONS, GRIDS,
                                              LOSS_OPTIONS, GridSettings)
from biasloss.data import get_dataset_spec
from biasloss.errors import InputError
from biasloss.models import is_model, unknown_model_error
from biasloss.train.recipes import default_recipe, get_recipe
from biasloss.train.runner import DEFAULTS
from biasloss.train.settings import add_options
from biasloss.train.train_cli import add_runtime_flags

__all__ = ["register", "settings_from_args"]


def _model_name(name: str, command: str) -> str:
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
    """Validate the command line and fill in the grid's defaults, as a :class:`GridSettings`."""
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
    recipe = get_recipe(name) if (name := args.recipe or grid.recipe) else default_recipe(dataset)
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
        results = run_ablation(settings, out, baseline=baseline, dry_run=args.dry_run, variants=variants)
        markdown = format_ablation
    elif args.baseline or args.variants:
        raise InputError("--baseline and --variants are for reproduce ablation")
    else:
        results, markdown = run_grid(settings, out, dry_run=args.dry_run), format_markdown
    if results is not None:
        print(markdown(results), end="")
        print(f"wrote {out / 'results.md'} and {out / 'results.json'}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``biasloss reproduce`` to the CLI."""
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
    add_options(p, ("dataset", "data_dir"), grouped=False,
                help={"dataset": "table4: cifar100, table3: imagenet, grid: fashion-mnist (defaults)"})
    p.add_argument("--models", nargs="+", metavar="MODEL",
                   help="model names (table4 also takes the zoo's short names: shufflenetv2 ...)")
    p.add_argument("--losses", nargs="+", choices=GRID_LOSSES, metavar="LOSS",
                   help=f"{' '.join(GRID_LOSSES)} (default: the table's)")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="seeds (default 0 1 2)")
    p.add_argument("--num-seeds", type=int, metavar="N", help="seeds 0..N-1")
    # train's flags, for every run of the grid
    add_options(p, [k for k in GRID_TRAIN_OPTIONS if k not in ("dataset", "data_dir", "device", "workers", "progress")],
                grouped=False, help={"epochs": "default: the recipe's (200 for cifar100, 350 for imagenet)",
                                     "recipe": "default: the table's (cifar100, imagenet) or the dataset's",
                                     "loss_scale": "multiply every run's loss by C (default 1)"})
    p.add_argument("--out", help="directory for runs/, results.md, results.json "
                                 "(default runs/reproduce-<grid>-<dataset>)")
    add_runtime_flags(p)
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
