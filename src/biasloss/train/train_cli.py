"""``biasloss train``: its flags, turned into a :class:`~biasloss.train.runner.TrainConfig` for
:func:`~biasloss.train.runner.run_train`.

A command module of :data:`biasloss.cli.COMMANDS`, imported only when ``biasloss train`` is given.
"""

from __future__ import annotations

__all__ = ["add_device_flag", "add_runtime_flags", "register"]


def register(subparsers) -> None:
    """Add ``biasloss train`` to the command line's ``subparsers``: a flag for each option of
    :class:`~biasloss.train.settings.TrainConfig`, and the run file's ``--config``/``--print-config``."""
    from biasloss.train.settings import add_options

    p = subparsers.add_parser("train", description="Train a classifier; without flags: SkipblockNet-XS with the "
                                                   "Bias Loss on Fashion-MNIST, the default recipe (2 epochs, about "
                                                   "7 minutes on a 2-core CPU). A run can be a file: --print-config "
                                                   "writes the options a command line gives, --config reads them "
                                                   "back (flags given beside it win).")
    p.add_argument("--config", metavar="FILE",
                   help="read the options from a run file (YAML, as --print-config writes it; keys are the flags' "
                        "names: batch_size or batch-size)")
    p.add_argument("--print-config", action="store_true",
                   help="print the run's options as a run file, resolved (defaults, the recipe's values, a "
                        "resumed checkpoint's), and exit without training")
    add_options(p)
    p.set_defaults(func=_train)


def add_runtime_flags(p) -> None:
    """``--device``, ``--workers`` and ``--no-progress``: ``train``'s, for the commands that run like it."""
    from biasloss.train.settings import add_options

    add_options(p, ("device", "workers", "progress"), grouped=False)


def add_device_flag(p, extra: str = "", *, default: str | None = None) -> None:
    """``--device`` as every command has it (one name, one default: :data:`~biasloss.train.settings.DEVICE_HELP`),
    ``extra`` said after the help; ``default``: the device resolved already (``None``: when the command runs)."""
    from biasloss.train.settings import DEVICE_HELP

    p.add_argument("--device", default=default, help=f"{DEVICE_HELP}; {extra}" if extra else DEVICE_HELP)


def _train(args) -> int:
    from dataclasses import fields

    from biasloss.train.runner import TrainConfig, resolve_config, run_train
    from biasloss.train.settings import format_config, read_config

    options = read_config(args.config) if args.config else {}
    options |= {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    config = TrainConfig(**options)
    if args.print_config:
        print(format_config(resolve_config(config)), end="")
    else:
        run_train(config)
    return 0
