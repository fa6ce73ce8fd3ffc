"""How long the ``biasloss`` command takes to start, against torch's own import, side by side.

Each of ``python -c "import torch"`` (the floor of any command that trains), ``python -c "import
biasloss"``, ``python -m biasloss --version`` and ``python -m biasloss --help`` runs in a fresh
interpreter, ``--reps`` times, interleaved (each round starts one further along the list); the
best time of each is printed with its ratio to ``import torch``. ``--ref REF`` adds the same
commands with that commit's ``src`` (``git archive`` into a temporary folder) beside this
checkout's. Start-up is reading files and unmarshalling code: run it alone, as a busy or shared
CPU slows every row, not always alike.

    python benchmarks/bench_start.py [--reps 5] [--ref HEAD]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

from biasloss._provenance import cpu_name

ROOT = Path(__file__).resolve().parents[1]
TORCH = 'python -c "import torch"'
#: row -> the interpreter's arguments
COMMANDS = {
    TORCH: ["-c", "import torch"],
    'python -c "import biasloss"': ["-c", "import biasloss"],
    "python -m biasloss --version": ["-m", "biasloss", "--version"],
    "python -m biasloss --help": ["-m", "biasloss", "--help"],
}


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _export(ref: str, into: Path) -> tuple[str, Path]:
    """``ref``'s short commit and its ``src`` unpacked under ``into``."""
    def git(*args: str) -> bytes:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"git {' '.join(args)}: {proc.stderr.decode().strip()}")
        return proc.stdout

    commit = git("rev-parse", "--short", ref).decode().strip()
    with tarfile.open(fileobj=BytesIO(git("archive", commit, "src"))) as tar:
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return commit, into / "src"


def _time(args: list[str], src: Path, cwd: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(src))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} (PYTHONPATH={src}) failed:\n{proc.stderr.decode()[-2000:]}")
    return elapsed


def measure(sides: dict[str, Path], reps: int, cwd: str) -> dict[tuple[str, str], float]:
    """(side, row) -> the best of ``reps`` times in seconds; ``import torch`` once, under the first side."""
    first = next(iter(sides))
    runs = [(first, TORCH)] + [(side, row) for side in sides for row in COMMANDS if row != TORCH]
    best = dict.fromkeys(runs, float("inf"))
    for rep in range(reps):
        k = rep % len(runs)
        for side, row in runs[k:] + runs[:k]:
            best[side, row] = min(best[side, row], _time(COMMANDS[row], sides[side], cwd))
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5, help="runs of each command; the best counts (default 5)")
    p.add_argument("--ref", help="also time this commit's src (e.g. HEAD)")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps must be at least 1, got {args.reps}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
          f"load average before: {_loadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"this checkout": ROOT / "src"}
        if args.ref:
            commit, src = _export(args.ref, Path(tmp) / "ref")
            sides[f"ref {commit}"] = src
        best = measure(sides, args.reps, tmp)
    torch_s = best[next(iter(sides)), TORCH]
    print(f"best of {args.reps}, seconds, and the ratio to {TORCH} (load average after: {_loadavg()})\n")
    print("| command | " + " | ".join(f"{side} s | / import torch" for side in sides) + " |")
    print("|---|" + "---|---|" * len(sides))
    for row in COMMANDS:
        cells = []
        for side in sides:
            seconds = best.get((side, row), torch_s if row == TORCH else None)
            cells += [f"{seconds:.2f}", f"{seconds / torch_s:.2f}x"]
        print(f"| {row} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
