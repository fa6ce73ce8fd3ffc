"""The paper's analyses as commands: ``profile`` (Tables 1-2), ``variance`` (Table 5),
``plot`` (Figures 1-6), ``reproduce`` (Tables 3-4) and ``reproduce-check`` (does a published run
record still repeat at this commit?).

Each command module exposes ``register(subparsers)``, which adds its subcommand to the
``biasloss`` parser and sets ``func`` to a callable ``func(args) -> int``; the commands are
listed, with their help lines, in :data:`biasloss.cli.COMMANDS`, as all the others are.
"""
