"""``python -m biasloss`` is the ``biasloss`` command."""

from biasloss.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
