"""The training CLI's accelerator paths, checked and timed in one command (for a machine with a GPU).

Runs, each as its own ``biasloss`` process on ``--device`` (default ``cuda``):

1. ``train`` in full precision, channels-last (the baseline);
2. ``train --amp bf16`` and 3. ``train --amp fp16`` (GradScaler: its state must be in the checkpoint);
4. ``train --compile`` (inductor);
5. ``eval`` of each run's ``last.pt``, which must report the top-1 the run logged (same precision);
6. ``benchmarks/bench_data.py --epoch`` on the device: the in-memory path against DataLoader (in a
   dry run, with ``--limit``, 4 steps: only that it runs).

and prints one table: test top-1, seconds per epoch and images per second of every run, the data
benchmark's ratio, and PASS / FAIL per check. Exit status 1 if any check fails.

    python benchmarks/device_check.py                        # Fashion-MNIST, 1 epoch each, cuda
    python benchmarks/device_check.py --device cpu --dataset digits --limit 256   # a dry run

On a lent GPU machine it runs first in one prepared command with issue 23's full-scale evidence grid:
that command, how Fashion-MNIST travels with it and what comes back are in the docstring of
``benchmarks/evidence_grid.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(cmd: list[str], log: Path) -> tuple[int, str, float]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    log.write_text(shlex.join(cmd) + "\n" + out)
    return proc.returncode, out, time.perf_counter() - t


def _last_metrics(run: Path) -> dict:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, help="train/test images (dry runs)")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--skip-data", action="store_true", help="skip the data benchmark")
    p.add_argument("--out", help="keep runs and logs here (default: a temporary folder)")
    args = p.parse_args(argv)

    root = Path(args.out or tempfile.mkdtemp(prefix="device_check_"))
    root.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "biasloss"]
    common = ["--dataset", args.dataset, "--device", args.device, "--epochs", str(args.epochs), "--no-progress"]
    if args.limit:
        common += ["--limit", str(args.limit)]
    variants = {"fp32": ["--amp", "off"], "bf16": ["--amp", "bf16"], "fp16": ["--amp", "fp16"]}
    if not args.skip_compile:
        variants["compile"] = ["--amp", "off", "--compile"]

    print(f"machine: {platform.platform()} | python {platform.python_version()} | device {args.device} | out {root}")
    rows, failures = [], []
    for name, extra in variants.items():
        run = root / name
        rc, out, wall = _run([*exe, "train", *common, *extra, "--out", str(run)], root / f"{name}.train.log")
        if rc != 0:
            failures.append(f"train {name}: exit {rc}: {out.strip().splitlines()[-1] if out.strip() else ''}")
            rows.append((name, "-", "-", "-", f"{wall:.0f}", "FAIL"))
            continue
        m = _last_metrics(run)
        checks = []
        if name == "fp16":
            import torch

            scaler = torch.load(run / "last.pt", map_location="cpu", weights_only=True).get("scaler")
            checks.append(("grad scaler saved", bool(scaler) and scaler.get("scale", 0) > 0))
        rc, out, _ = _run([*exe, "eval", "--checkpoint", str(run / "last.pt"), "--device", args.device, "--json",
                           "--no-progress"], root / f"{name}.eval.log")
        top1 = json.loads(out.strip().splitlines()[-1])["top1"] if rc == 0 else None
        checks.append(("eval = logged top-1", top1 == m["val_top1"]))
        bad = [c for c, ok in checks if not ok]
        failures += [f"{name}: {c}" for c in bad]
        rows.append((name, f"{m['val_top1']:.2f}", f"{m['time_s']:.1f}", f"{m.get('train_img_s', 0):.0f}",
                     f"{wall:.0f}", "FAIL" if bad else "PASS"))

    print("\n| run | test top-1 % | epoch s | train img/s | wall s (process) | checks |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    if not args.skip_data:
        # a dry run (--limit) only shows that the benchmark runs: a few steps instead of whole epochs
        timing = ["--steps", "4", "--reps", "1"] if args.limit else ["--epoch", "--reps", "3"]
        cmd = [sys.executable, str(HERE / "bench_data.py"), "--device", args.device, *timing, "--rotation", "15"]
        rc, out, _ = _run(cmd, root / "bench_data.log")
        ratio = re.search(r"speed-up \(torchvision / in-memory\): ([\d.]+)x at min, ([\d.]+)x at median", out)
        if rc != 0 or ratio is None:
            failures.append(f"bench_data: exit {rc}")
        else:
            print(f"\ndata benchmark ({'4 steps' if args.limit else 'one epoch'}, in-memory vs DataLoader): "
                  f"{ratio.group(1)}x at min, {ratio.group(2)}x at median (goal 2x); log {root / 'bench_data.log'}")

    print(f"\nlogs: {root}")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
