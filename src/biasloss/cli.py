"""The ``biasloss`` command: the subcommands of :data:`COMMANDS`, each built by its own module.

Errors and exit statuses: see :func:`main` and :mod:`biasloss.errors`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "build_parser", "command_of", "main", "parse_args"]


#: Every subcommand: name -> (the module that builds its parser, its line in ``biasloss --help``), in
#: the order of that listing. The only way to add one: a line here, and in the module a
#: ``register(subparsers)`` that calls ``subparsers.add_parser(name, description=...)`` (no
#: ``help``: the line is this table's), adds the flags and sets ``func(args) -> int`` as a default.
#: A module is imported when its command is given and not before, so ``biasloss --help`` and
#: ``--version`` import none of them (nor torch); a module that is missing is an ImportError then.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("biasloss.train.train_cli", "train a classifier with cross-entropy, focal loss or the Bias Loss"),
    "eval": ("biasloss.train.eval_cli", "top-1 / top-5 of a checkpoint on the test split"),
    "export": ("biasloss.export_cli",
               "a checkpoint to ONNX, ExecuTorch or TorchScript, BatchNorm folded, checked"),
    "detect": ("biasloss.detection.detect_cli",
               "SSD with a SkipblockNet backbone on PASCAL VOC (Table 6) or the scenes"),
    "profile": ("biasloss.analysis.profile", "parameters, MACs, latency and throughput of models (Tables 1-2)"),
    "variance": ("biasloss.analysis.variance",
                 "per-sample feature variance at the 5th, 20th and last conv layers (Table 5)"),
    "plot": ("biasloss.analysis.plots",
             "the paper's figures: weights, loss, tradeoff, learning curves (needs matplotlib)"),
    "reproduce": ("biasloss.analysis.reproduce",
                  "grids of models x losses x seeds through the trainer (Tables 3 and 4), resumable"),
    "reproduce-check": ("biasloss.analysis.recheck",
                        "re-run a run record of 'reproduce' at this commit: same metrics, or the first difference"),
}


class _Registrar:
    """What a command module's ``register(subparsers)`` is given: ``add_parser`` of the real
    subparsers, held to the scheme of :data:`COMMANDS` (a listed name, the table's help line)."""

    def __init__(self, subparsers) -> None:
        self._subparsers = subparsers
        self.added: list[str] = []

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        if name not in COMMANDS:
            raise ValueError(f"{name!r} is not in biasloss.cli.COMMANDS: add it there")
        if "help" in kwargs:
            raise TypeError(f"the help line of {name!r} is biasloss.cli.COMMANDS's: leave out add_parser's help")
        self.added.append(name)
        return self._subparsers.add_parser(name, help=COMMANDS[name][1], **kwargs)


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option (the top level's options,
    ``--help`` and ``--version``, take no value), if it is one of :data:`COMMANDS`."""
    word = next((arg for arg in argv if not arg.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``biasloss`` parser: every command of :data:`COMMANDS` listed with its help line, and
    ``command``'s flags built by its module (imported now; no other command module is)."""
    from biasloss import __version__

    parser = argparse.ArgumentParser(prog="biasloss", description="Bias Loss and SkipblockNet (ICCV 2021): train, "
                                     "evaluate and analyse compact classifiers.")
    parser.add_argument("--version", action="version", version=f"biasloss {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, text) in COMMANDS.items():
        if name != command:
            subparsers.add_parser(name, help=text)  # listed; never parsed (the command is another)
            continue
        registrar = _Registrar(subparsers)
        module = importlib.import_module(module_name)
        module.register(registrar)
        if name not in registrar.added:
            raise RuntimeError(f"{module.__name__}.register() did not add the {name!r} command")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``argv`` (default: ``sys.argv[1:]``) parsed by the parser of the command it names."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return build_parser(command_of(argv)).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``biasloss`` command with ``argv`` (default: ``sys.argv[1:]``); returns its exit status.

    Only a :class:`~biasloss.errors.BiaslossError` is caught: one line on stderr and the error's
    exit status (2: bad input, checkpoint, data set, missing package, unwritable output; 1: a
    non-finite loss; 130 / 143: training stopped by Ctrl-C / SIGTERM, ``last.pt`` written).
    Anything else is a bug and propagates with its traceback. ``BIASLOSS_DEBUG=1`` re-raises
    errors too (an interrupted training still exits 130 / 143)."""
    args = parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    from biasloss.errors import BiaslossError, TrainingInterrupted

    try:
        return args.func(args)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a training
        print("biasloss: interrupted", file=sys.stderr)
        return 130
    except TrainingInterrupted as e:  # where it stopped is in the log; continue with --resume
        print(f"biasloss: {e}", file=sys.stderr)
        return e.exit_code
    except BiaslossError as e:
        if os.environ.get("BIASLOSS_DEBUG"):
            raise
        from biasloss._checks import one_line

        print(f"biasloss: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
