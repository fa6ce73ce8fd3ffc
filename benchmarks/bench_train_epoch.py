"""The main job's training speed at this checkout against another commit, side by side.

Each repetition trains ``biasloss train`` (the Fashion-MNIST recipe: SkipblockNet-XS, batch 128,
channels-last) for one epoch of the first ``--limit`` images with this checkout's ``src`` and with
``--ref``'s (a ``git worktree`` in a temporary folder), alternating which goes first, each in its
own process with ``--threads`` threads, and reads the epoch's training images per second
(``train_img_s`` of ``metrics.jsonl``: the steps alone, without evaluation or start-up). Prints
both sides' median, min and max and the ratio of medians (> 1: this checkout is faster). Run it
alone on the machine: two trainings at once slow each other down several times.

    python benchmarks/bench_train_epoch.py --ref HEAD~3
    python benchmarks/bench_train_epoch.py --ref HEAD --limit 256 --reps 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from biasloss._provenance import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def _epoch(src: Path, out: Path, args: argparse.Namespace) -> float:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "biasloss", "train", "--dataset", args.dataset, "--epochs", "1", "--limit",
           str(args.limit), "--device", "cpu", "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["train_img_s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, help="the commit to compare with (e.g. HEAD~1)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--limit", type=int, default=3000, help="training and test images (default 3000)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.ref], capture_output=True,
                            text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench_train_epoch_") as tmp:
        ref_tree = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(ref_tree), commit],
                       check=True)
        try:
            sides = {"this checkout": ROOT / "src", f"ref {commit}": ref_tree / "src"}
            speeds: dict[str, list[float]] = {name: [] for name in sides}
            for rep in range(args.reps):
                order = list(sides) if rep % 2 == 0 else list(reversed(sides))
                for name in order:
                    out = Path(tmp) / f"{name.split()[0]}-{rep}"
                    speeds[name].append(_epoch(sides[name], out, args))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref_tree)], check=False)

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; {args.threads} thread(s); "
          f"{args.dataset}, first {args.limit} images, 1 epoch, {args.reps} rep(s) each, alternating")
    print("| side | median img/s | min | max |\n|---|---|---|---|")
    for name, values in speeds.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |")
    this, ref = (statistics.median(v) for v in speeds.values())
    print(f"ratio (this / ref, medians): {this / ref:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
