"""The training CLI's accelerator paths, checked and timed in one command (for a machine with a GPU).

Runs, each as its own ``python -m biasloss`` process on ``--device`` (default ``cuda``):

1. ``train`` in full precision, channels-last (the baseline);
2. ``train --amp bf16`` and 3. ``train --amp fp16`` (GradScaler: its state must be in the checkpoint);
4. ``train --compile`` (inductor), and on CUDA also ``train --compile --compile-mode
   reduce-overhead`` (CUDA graphs; row ``compile-ro``); ``--skip-compile`` leaves both out;
5. ``eval --json`` of each run's ``last.pt``, which must report the top-1 the run logged (same
   precision): exactly on the CPU, within :data:`CUDA_TOP1_TOLERANCE` (0.1 percentage points) on
   CUDA, where a new process may run other cuDNN algorithms (the reason is at the constant);
6. ``benchmarks/bench_data.py --epoch`` on the device: the in-memory path against DataLoader (in a
   dry run, with ``--limit``, 4 steps: only that it runs).

and prints one table: test top-1, eval - logged top-1, seconds per epoch and images per second of
every run, the data benchmark's ratio, and PASS / FAIL per check. Exit status 1 if any check fails,
2 if ``--out`` already holds a check.

Everything goes under ``--out``: ``runs/<row>/`` (the run directories, checkpoints included),
``logs/<row>.train.log``, ``logs/<row>.eval.log``, ``logs/bench_data.log`` (each the command, its
exit status, then its stdout and its stderr, labelled) and ``device_check.json`` (settings, every
child's command, exit status and wall time, the rows and their checks, the failures, the data
benchmark's ratio, the platform, the versions of biasloss, torch, torchvision and timm, the git
state or ``--commit``, the GPU's name; rewritten after every step, ``"finished": true`` at the end).
The children get one environment: this one with this checkout's ``src/`` first on ``PYTHONPATH``
and ``BIASLOSS_DATA`` made absolute; Fashion-MNIST is read where the loader looks
(``$BIASLOSS_DATA/FashionMNIST/raw``, then ``/usr/share/datasets/fashion-mnist``). Nothing is
installed: the machine's ``python3`` needs torch, torchvision and timm only.

On the device machine (the ``run`` tool: a bash command in a copy of the repository root, ``$OUT``
the folder that comes back; ``python3`` has torch, torchvision and timm, maybe an older torch than
ours; nothing is installed), after ``mkdir -p data/FashionMNIST/raw && cp
/usr/share/datasets/fashion-mnist/*.gz data/FashionMNIST/raw/`` here (``/data/`` is git-ignored, so
it travels only when carried), alone: ``carry: ["data"]``, ``timeout_s: 420``, this command::

    BIASLOSS_DATA=$PWD/data PYTHONPATH=$PWD/src python3 benchmarks/device_check.py --out $OUT/device_check; s=$?
    mv $OUT/device_check/device_check.json $OUT/
    tar czf $OUT/device_check.tar.gz --exclude='*.pt' -C $OUT device_check && rm -rf $OUT/device_check; exit $s

Its first line is the check (the table is in the reply's output); the rest packs the folder: at
most 8 files come back from ``$OUT`` (none deeper than ``$OUT/a/b/``), fewer than the check writes,
and its checkpoints would compete for them. The first device call runs the same, under ``timeout
-k 10 300`` and with ``--commit``, before issue 23's full-scale evidence grid: that command is in
the docstring of ``benchmarks/evidence_grid.py``.

Time on the device: 5 trainings of one Fashion-MNIST epoch, 5 evals and the data benchmark (3
epochs of each pipeline, plus warm-up and data-only passes), not measured on a GPU yet: estimated
10-30 s for each eager training or eval process (start-up, CUDA and data load included), 1-2
minutes for each compiled training (inductor compiles cold on a fresh machine), under a minute for
the data benchmark: about 3-5 minutes in all, hence the 300 s cap in the combined command. The
``wall s`` column and ``device_check.json`` give the real times.

A dry run on the CPU, the same command with the CPU's substitutions (fp32, bf16, fp16 on 512
images; 4 steps of the data benchmark): 396 s and 343 s wall in two runs, measured on a 2-core
CPU shared with another engineer's test runs; autocast is slow on that CPU (bf16 trained in 104
and 211 s, fp16 in 150 and 51 s, fp32 in 28 and 26 s)::

    OUT=$(mktemp -d) BIASLOSS_DATA=$PWD/data PYTHONPATH=$PWD/src .venv/bin/python benchmarks/device_check.py \\
        --device cpu --limit 512 --skip-compile --out $OUT/device_check
    python benchmarks/device_check.py --device cpu --dataset digits --limit 256 --out /tmp/dc   # no Fashion-MNIST
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

#: On CUDA, the most ``eval``'s top-1 may differ from the top-1 the training run logged for the
#: same weights, in percentage points: 0.1, that is at most 10 of Fashion-MNIST's 10,000 test
#: images. ``eval`` is a new process: with ``cudnn.benchmark`` on (``train`` turns it on for CUDA)
#: cuDNN may choose other convolution algorithms there, and reductions in bf16/fp16 round
#: differently with them, so the few images near a tie between two classes can flip. On the CPU
#: the same kernels run in the same order, and the two must be equal.
CUDA_TOP1_TOLERANCE = 0.1

DATA_RATIO = re.compile(r"speed-up \(torchvision / in-memory\): ([\d.]+)x at min, ([\d.]+)x at median")


class Proc(NamedTuple):
    """A finished child process: exit status, its stdout and stderr kept apart, wall seconds."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float


def say(*parts: Any) -> None:
    print(*parts, flush=True)  # the log must hold what came before a timeout's kill


def run_logged(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    """Run ``cmd`` to its end; write ``log``: the command, its exit status and wall time, then its
    stdout and its stderr, each under its own label."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
                          stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {shlex.join(cmd)}\nexit {proc.returncode} after {wall:.1f} s\n"
                   f"\n===== stdout =====\n{proc.stdout}\n===== stderr =====\n{proc.stderr}")
    return Proc(proc.returncode, proc.stdout, proc.stderr, wall)


def last_json_object(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that parses as a JSON object (``None`` when none does): a line a
    library prints around it, or a warning that reached stdout, is skipped."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def failure(what: str, proc: Proc) -> str:
    """One line for a failed child: what it was, its exit status and its last stderr line (its
    last stdout line when stderr is empty)."""
    return f"{what}: exit {proc.returncode}: {last_line(proc.stderr) or last_line(proc.stdout) or '(no output)'}"


def top1_tolerance(device: str) -> float:
    """How far ``eval``'s top-1 may be from the logged one, in percentage points: 0 on the CPU,
    :data:`CUDA_TOP1_TOLERANCE` on CUDA."""
    return CUDA_TOP1_TOLERANCE if device.startswith("cuda") else 0.0


def top1_agrees(eval_top1: float, logged_top1: float, device: str) -> bool:
    tolerance = top1_tolerance(device)
    if tolerance == 0:
        return eval_top1 == logged_top1
    # both are rounded to 4 decimals: 1e-9 only absorbs the float error of the difference itself
    return abs(eval_top1 - logged_top1) <= tolerance + 1e-9


def last_metrics(run: Path) -> dict[str, Any] | None:
    """The last epoch's record with a numeric ``val_top1`` in the run's ``metrics.jsonl`` (read by the
    library's one reader, which skips torn or foreign lines), or ``None``."""
    from biasloss.train.loop import read_metrics

    records = [r for r in read_metrics(run / "metrics.jsonl") if isinstance(r.get("val_top1"), (int, float))]
    return records[-1] if records else None


def variants(device: str, skip_compile: bool) -> dict[str, list[str]]:
    """Row name -> the options of its ``train``; ``compile-ro`` (CUDA graphs) on CUDA only."""
    rows = {"fp32": ["--amp", "off"], "bf16": ["--amp", "bf16"], "fp16": ["--amp", "fp16"]}
    if not skip_compile:
        rows["compile"] = ["--amp", "off", "--compile"]
        if device.startswith("cuda"):
            rows["compile-ro"] = ["--amp", "off", "--compile", "--compile-mode", "reduce-overhead"]
    return rows


def child_env() -> dict[str, str]:
    """The one environment of every child: this one, with this checkout's ``src/`` first on
    ``PYTHONPATH`` and ``BIASLOSS_DATA`` absolute."""
    env = dict(os.environ)
    if (SRC / "biasloss").is_dir():
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != SRC]
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), *rest])
    if env.get("BIASLOSS_DATA"):
        env["BIASLOSS_DATA"] = str(Path(env["BIASLOSS_DATA"]).expanduser().resolve())
    return env


def gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        if torch.cuda.is_available() and hasattr(torch.cuda, "get_device_name"):
            return torch.cuda.get_device_name(torch.device(device))
    except Exception as e:  # noqa: BLE001 - the record must still be written
        return f"unknown ({type(e).__name__}: {e})"
    return None


def machine(device: str, commit: str | None) -> dict[str, Any]:
    """Platform, versions (biasloss, torch, torchvision, timm, Python), CPU, git state, GPU name."""
    from biasloss._provenance import environment

    info = {"platform": platform.platform(), "gpu": gpu_name(device), "commit": commit, **environment()}
    for name in ("torchvision", "timm"):
        try:
            info["versions"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info["versions"][name] = None
    return info


def scaler_saved(checkpoint: Path) -> bool:
    import torch

    try:
        scaler = torch.load(checkpoint, map_location="cpu", weights_only=True).get("scaler")
    except Exception:  # noqa: BLE001 - an unreadable checkpoint fails the check
        return False
    return bool(scaler) and scaler.get("scale", 0) > 0


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    head, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a new folder for everything: runs/, logs/, device_check.json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, help="train/test images (dry runs)")
    p.add_argument("--skip-compile", action="store_true", help="no compile rows")
    p.add_argument("--rows", nargs="+", metavar="ROW",
                   help="only these rows (fp32 bf16 fp16 compile compile-ro; default: all that apply)")
    p.add_argument("--skip-data", action="store_true", help="skip the data benchmark")
    p.add_argument("--commit", help="the commit this tree is, for the record where it has no .git")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = get_args(argv)
    t0 = time.perf_counter()
    root = Path(args.out).expanduser().resolve()
    runs, logs = root / "runs", root / "logs"
    if runs.is_dir() and any(runs.iterdir()):
        print(f"device_check.py: --out {root} already holds a check; give a new folder", file=sys.stderr)
        return 2
    logs.mkdir(parents=True, exist_ok=True)
    if (SRC / "biasloss").is_dir():  # this process reads metrics and provenance with this checkout's biasloss
        sys.path.insert(0, str(SRC))
    env = child_env()
    exe = [sys.executable, "-m", "biasloss"]
    common = ["--dataset", args.dataset, "--device", args.device, "--epochs", str(args.epochs), "--no-progress"]
    if args.limit:
        common += ["--limit", str(args.limit)]
    tolerance = top1_tolerance(args.device)

    record: dict[str, Any] = {
        "command": [sys.executable, *sys.argv], "settings": vars(args), "top1_tolerance_points": tolerance,
        "env": {k: env.get(k) for k in ("PYTHONPATH", "BIASLOSS_DATA")}, **machine(args.device, args.commit),
        "children": [], "rows": [], "data_benchmark": None, "failures": [], "passed": None, "finished": False}
    failures: list[str] = record["failures"]

    def save() -> None:
        tmp = root / "device_check.json.tmp"
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, root / "device_check.json")

    def child(name: str, cmd: list[str], log: Path) -> Proc:
        proc = run_logged(cmd, log, env)
        record["children"].append({"name": name, "command": cmd, "exit_code": proc.returncode,
                                   "wall_s": round(proc.wall_s, 2), "log": str(log.relative_to(root))})
        say(f"  {name}: exit {proc.returncode} after {proc.wall_s:.0f} s")
        return proc

    say(f"machine: {record['platform']} | python {platform.python_version()} | torch {record['versions']['torch']} "
        f"| torchvision {record['versions']['torchvision']} | timm {record['versions']['timm']} | device "
        f"{args.device}{' (' + record['gpu'] + ')' if record['gpu'] else ''} | out {root}")
    save()
    for name, extra in variants(args.device, args.skip_compile).items():
        if args.rows and name not in args.rows:
            continue
        run = runs / name
        row: dict[str, Any] = {"run": name, "options": extra, "val_top1": None, "eval_top1": None,
                               "eval_minus_logged": None, "time_s": None, "train_img_s": None, "wall_s": None,
                               "checks": {}, "status": "FAIL"}
        record["rows"].append(row)
        proc = child(f"train {name}", [*exe, "train", *common, *extra, "--out", str(run)], logs / f"{name}.train.log")
        row["wall_s"] = round(proc.wall_s, 2)
        m = last_metrics(run) if proc.returncode == 0 else None
        if proc.returncode != 0 or m is None:
            failures.append(failure(f"train {name}", proc) if proc.returncode != 0
                            else f"train {name}: no epoch with val_top1 in {run / 'metrics.jsonl'}")
            save()
            continue
        row.update(val_top1=m["val_top1"], time_s=m.get("time_s"), train_img_s=m.get("train_img_s"))
        if name == "fp16":
            row["checks"]["grad scaler saved"] = scaler_saved(run / "last.pt")
        proc = child(f"eval {name}", [*exe, "eval", "--checkpoint", str(run / "last.pt"), "--device", args.device,
                                      "--json", "--no-progress"], logs / f"{name}.eval.log")
        result = last_json_object(proc.stdout) if proc.returncode == 0 else None
        check = "eval = logged top-1" + (f" (within {tolerance} points)" if tolerance else "")
        if proc.returncode != 0:
            failures.append(failure(f"eval {name}", proc))
            row["checks"][check] = False
        elif result is None or not isinstance(result.get("top1"), (int, float)):
            failures.append(f"eval {name}: no JSON object with top1 on its stdout: {last_line(proc.stdout)!r}")
            row["checks"][check] = False
        else:
            row["eval_top1"] = result["top1"]
            row["eval_minus_logged"] = round(result["top1"] - m["val_top1"], 4)
            row["checks"][check] = top1_agrees(result["top1"], m["val_top1"], args.device)
            if not row["checks"][check]:
                failures.append(f"{name}: eval top-1 {result['top1']} against logged {m['val_top1']} "
                                f"(tolerance {tolerance} points)")
        if not row["checks"].get("grad scaler saved", True):
            failures.append(f"{name}: grad scaler saved")
        row["status"] = "PASS" if all(row["checks"].values()) else "FAIL"
        save()

    def cell(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    say("\n| run | test top-1 % | eval - logged | epoch s | train img/s | wall s (train) | checks |")
    say("|---|---|---|---|---|---|---|")
    for r in record["rows"]:
        say(f"| {r['run']} | {cell(r['val_top1'], '.2f')} | {cell(r['eval_minus_logged'], '+.2f')} | "
            f"{cell(r['time_s'], '.1f')} | {cell(r['train_img_s'], '.0f')} | {cell(r['wall_s'], '.0f')} | "
            f"{r['status']} |")
    say(f"(eval - logged: percentage points of top-1; must be 0 on the CPU, at most {CUDA_TOP1_TOLERANCE} on CUDA: "
        "a new process may run other cuDNN algorithms, so images near a tie can flip)")

    if not args.skip_data:
        # a dry run (--limit) only shows that the benchmark runs: a few steps instead of whole epochs
        timing = ["--steps", "4", "--reps", "1"] if args.limit else ["--epoch", "--reps", "3"]
        cmd = [sys.executable, str(HERE / "bench_data.py"), "--device", args.device, *timing, "--rotation", "15"]
        proc = child("bench_data", cmd, logs / "bench_data.log")
        ratio = DATA_RATIO.search(proc.stdout)
        record["data_benchmark"] = {"timing": "4 steps" if args.limit else "one epoch, 3 repetitions",
                                    "exit_code": proc.returncode, "wall_s": round(proc.wall_s, 2),
                                    "ratio_min": float(ratio.group(1)) if ratio else None,
                                    "ratio_median": float(ratio.group(2)) if ratio else None}
        if proc.returncode != 0:
            failures.append(failure("bench_data", proc))
        elif ratio is None:
            failures.append(f"bench_data: no speed-up line on its stdout: {last_line(proc.stdout)!r}")
        else:
            say(f"\ndata benchmark ({record['data_benchmark']['timing']}, in-memory vs DataLoader): "
                f"{ratio.group(1)}x at min, {ratio.group(2)}x at median (goal 2x)")

    record.update(passed=not failures, finished=True, wall_s=round(time.perf_counter() - t0, 1))
    save()
    say(f"\nlogs and runs: {root}; record: {root / 'device_check.json'}; {record['wall_s']:.0f} s")
    if failures:
        say("FAILED: " + "; ".join(failures))
        return 1
    say("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
