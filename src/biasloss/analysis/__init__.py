"""The paper's analyses as commands: ``profile`` (Tables 1-2), ``variance`` (Table 5),
``plot`` (Figures 1-6), ``reproduce`` (Tables 3-4) and ``reproduce-check`` (does a published run
record still repeat at this commit?).

Each command module exposes ``register(subparsers)``, which adds its subcommand to the
``biasloss`` parser and sets ``func`` to a callable ``func(args) -> int``.
"""

from __future__ import annotations

import importlib

__all__ = ["COMMAND_MODULES", "register_commands"]

COMMAND_MODULES = ("profile", "variance", "plots", "reproduce", "recheck")


def register_commands(subparsers) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:  # a command not built yet
            if e.name != f"{__name__}.{name}":
                raise
            continue
        module.register(subparsers)
