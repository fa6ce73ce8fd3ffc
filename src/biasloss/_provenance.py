"""What produced a result: the code (git commit, dirty tree), the versions and the machine.

One place for what every record stores (``reproduce``'s run records, the benchmarks' JSON files),
so that a published number names the code that made it and can be re-run at that commit: :func:`environment`
(the versions, the machine and :func:`git_state`).

Floating point results depend on all of that: the same command gives the same digits only with
the same code, torch build, thread count and CPU family (its vector instructions).

A record's git state is the tree's when the record is written: a tree edited while a long job
runs is reported dirty, and a commit made meanwhile is the commit the record names.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["cpu_name", "environment", "git_state"]

#: seconds any one git command may take before its answer counts as unknown
GIT_TIMEOUT_S = 10.0


def _git(args: list[str], cwd: Path) -> str | None:
    """``git args`` in ``cwd``: its stdout, or ``None`` when git is missing, fails or hangs."""
    # no optional locks: `git status` must not take the index lock of a tree someone works in
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": HEAD's 40 hex digits or None, "dirty": bool or None}`` of the git checkout
    holding ``path`` (default: the biasloss source in use, which counts only when git tracks it,
    not a copy installed into a virtual environment that lies inside some checkout).

    ``dirty`` is ``True`` when tracked files differ from ``HEAD`` (staged or not; untracked files
    do not count). Never raises; every git command has a timeout of :data:`GIT_TIMEOUT_S`."""
    unknown: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        if path is None:
            where = Path(__file__).resolve().parent
            if _git(["ls-files", "--error-unmatch", "--", "__init__.py"], where) is None:
                return unknown  # not a tracked source tree
        else:
            where = Path(path).resolve()
            if where.is_file():
                where = where.parent
        if not where.is_dir():
            return unknown
    except (OSError, RuntimeError, ValueError, TypeError):
        return unknown
    head = (_git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], where) or "").strip()
    if len(head) != 40 or any(c not in "0123456789abcdef" for c in head):
        return unknown
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    return {"commit": head, "dirty": None if status is None else bool(status.strip())}


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else :func:`platform.processor` or the
    machine type (``x86_64``)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict[str, Any]:
    """What every record stores about where it was made::

        {"versions": {"biasloss", "torch", "python"},
         "machine": {"cpu", "logical_cpus", "threads", "cpu_capability"},
         "git": {"commit", "dirty"}}

    ``threads`` is torch's intra-op thread count now; ``cpu_capability`` the vector instruction
    set torch's CPU kernels use (``torch.backends.cpu.get_cpu_capability()``: ``AVX2``,
    ``AVX512``, ...; ``None`` for a torch without it)."""
    import torch

    import biasloss

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    return {
        "versions": {"biasloss": biasloss.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "machine": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "cpu_capability": capability},
        "git": git_state(),
    }
