"""``biasloss eval``: top-1 / top-5 of a checkpoint (:func:`~biasloss.train.runner.run_eval`).

A command module of :data:`biasloss.cli.COMMANDS`, imported only when ``biasloss eval`` is given.
"""

from __future__ import annotations

import json

from biasloss._checks import positive
from biasloss.train.train_cli import add_runtime_flags

__all__ = ["register"]


def register(subparsers) -> None:
    """Add ``biasloss eval`` to the command line's ``subparsers``."""
    p = subparsers.add_parser("eval")
    p.add_argument("--checkpoint", required=True, help="a last.pt or best.pt written by train")
    p.add_argument("--dataset", help="default: the dataset it was trained on")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--limit", type=int, metavar="N",
                   help="evaluate on the first N test images (default: the run's own --limit, else all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_runtime_flags(p)
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    from biasloss.train.runner import run_eval

    positive("--batch-size", args.batch_size)
    positive("--limit", args.limit, kind=int)
    result = run_eval(args)
    if args.json:
        print(json.dumps(result))
    else:
        other = "" if result["trained_on"] == result["dataset"] else f", trained on {result['trained_on']}"
        print(f"{result['model']} on {result['dataset']} ({result['samples']} test images, "
              f"{result['weights']} weights, epoch {result['epoch']}{other}): "
              f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%")
    return 0
