"""``biasloss train``: its flags, turned into a :class:`~biasloss.train.runner.TrainConfig` for
:func:`~biasloss.train.runner.run_train`.

A command module of :data:`biasloss.cli.COMMANDS`, imported only when ``biasloss train`` is given.
"""

from __future__ import annotations

__all__ = ["add_runtime_flags", "register"]


def register(subparsers) -> None:
    """Add ``biasloss train`` to the command line's ``subparsers``."""
    from biasloss.data import DATASETS
    from biasloss.losses import LOSSES
    from biasloss.train.recipes import RECIPES
    from biasloss.train.runner import DEFAULTS

    p = subparsers.add_parser("train", description="Train a classifier; without flags: SkipblockNet-XS with the "
                                                   "Bias Loss on Fashion-MNIST, the default recipe (2 epochs, about "
                                                   "7 minutes on a 2-core CPU).")
    p.add_argument("--dataset", help=", ".join(f"{name} (default)" if name == DEFAULTS["dataset"] else name
                                               for name in DATASETS))
    p.add_argument("--data-dir", help="where the dataset lives (default: standard places per dataset)")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset if missing")
    p.add_argument("--model", help="skipblocknet_xs/s/m/l, cifar_* zoo, any timm name, or torchvision.<name> "
                                   "(default: the recipe's)")
    p.add_argument("--loss", choices=tuple(LOSSES), help=f"default: {DEFAULTS['loss']}")
    p.add_argument("--recipe", help=f"{', '.join(RECIPES)} (default: the dataset's)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--alpha", type=float, help="Bias Loss alpha (default 0.3)")
    p.add_argument("--beta", type=float, help="Bias Loss beta (default 0.3)")
    p.add_argument("--scaling", choices=("batch", "running_min", "rank"),
                   help="Bias Loss variance scaling (default batch; rank is ours, beyond the paper)")
    p.add_argument("--clamp", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="Bias Loss weight clamp (default 0.5 1.5)")
    p.add_argument("--no-clamp", dest="clamp", action="store_const", const="none",
                   help="Bias Loss weights unclamped, as in the authors' code")
    p.add_argument("--gamma", type=float, help="focal loss gamma (default 2)")
    p.add_argument("--loss-scale", type=float, metavar="C",
                   help="multiply the training loss by C, any loss (default 1; the CE x c control of "
                        "docs/results.md)")
    p.add_argument("--no-loss-sync", action="store_true",
                   help="under torchrun, scale the Bias Loss per rank instead of over the global batch")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="run directory (default runs/<dataset>-<model>-<loss>-s<seed>, numbered -2, -3, ... when that holds a run)")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="fine-tune from these weights: a biasloss checkpoint (its evaluated weights), the "
                        "authors' skipblocknet-m.pth, or a state dict of the same architecture; a classifier "
                        "for another number of classes starts fresh, the first conv adapts to the channels")
    p.add_argument("--resume", metavar="CKPT",
                   help="continue a run from its last.pt, exactly as planned: the options that define the run, "
                        "--epochs included, cannot change (to train longer, start a new run with --init); a "
                        "finished run is left as it is (exit 0, nothing to do)")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop (with a checkpoint) after epoch N")
    p.add_argument("--limit", type=int, help="use only the first N train and test images (smoke tests)")
    add_runtime_flags(p)
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default=None,
                   help="mixed precision (auto: on CUDA bf16 where supported, else fp16 with GradScaler; "
                        "full precision on the CPU); bf16/fp16 also run on the CPU")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None,
                   help="keep contiguous memory format (channels-last is 1.6-1.8x faster on CPU)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training step's model; the last short batch of each epoch is "
                        "dropped, so that one compilation serves the whole run (evaluation stays eager); "
                        "a resume keeps the run's choice")
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile's mode, implies --compile (default: default); reduce-overhead replays "
                        "CUDA graphs, for small models whose steps are launch-bound")
    p.set_defaults(func=_train)


def add_runtime_flags(p) -> None:
    """``--device``, ``--workers`` and ``--no-progress``: ``train``'s and ``eval``'s."""
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--workers", type=int, help="DataLoader workers for folder datasets (default 4)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars (they are off anyway when stderr is not a terminal)")


def _train(args) -> int:
    from dataclasses import fields

    from biasloss.train.runner import TrainConfig, run_train

    run_train(TrainConfig(**{field.name: getattr(args, field.name) for field in fields(TrainConfig)}))
    return 0
