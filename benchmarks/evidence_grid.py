"""Issue 23's evidence grid at full scale, for a machine with a GPU: several ``biasloss reproduce
ablation`` processes side by side on one device, within a wall-clock budget.

The CPU ran a reduced version (``--limit 3000 --epochs 5``), one command per model::

    biasloss reproduce ablation --dataset fashion-mnist --models skipblocknet_xs --seeds 0 1 2 3 4 \\
        --epochs 5 --limit 3000 --variants ce-x-c rank running_min --variance --no-progress --device cpu \\
        --out docs/results/evidence-skipblocknet_xs

This script trains the same grid on all 60k training images (no ``--limit``) for ``--epochs``
(default 15): both models (SkipblockNet-XS ``small_input`` at 28 px, the CIFAR zoo's ShuffleNetV2
0.5x at 28 px, whose final map is 4x4x1024 as at 32 px), every arm (``ce``, ``bias``, ``ce-x-c``, ``rank``, ``running_min``), 5 seeds:

1. one child process per (model, seed), ``--jobs`` at a time (default 10: all of them), seed 0 of
   every model first: ``python -m biasloss reproduce ablation --models M --seeds S ... --out
   evidence-M`` (the command above with one seed), which trains ``ce`` and ``bias`` in
   ``evidence-M/default/`` and then each variant in ``evidence-M/<variant>/``, in that order (CE x c
   needs its seed's Bias Loss run: c is read from its record). No two children train the same run
   (each run directory is locked while it trains anyway). Each child gets ``OMP_NUM_THREADS`` =
   cores / jobs (at least 1; ``--threads``, or ``OMP_NUM_THREADS`` when set, overrides it), runs
   in ``--out`` (so that the records name machine-independent relative paths), with ``src/`` of
   this checkout first on ``PYTHONPATH``, and writes its output to ``logs/M-sS.log``. A child that
   fails before the budget is up (for example two children of one model rewriting the same
   ``results.json`` at once) is started again ``--retries`` times: finished runs are skipped;
2. at ``--budget-s`` seconds (or on SIGTERM / Ctrl-C) no child is started any more and the
   running ones get SIGTERM: the trainer ends its step, writes a resumable ``last.pt`` and exits
   143, 128 + SIGTERM (a child between runs just ends); after ``--grace-s`` the rest are killed;
3. one aggregation call per model over the runs that finished (each has its record,
   ``evidence-M/<part>/records/M-<loss>-sS.json``): ``reproduce ablation`` with the seeds and
   variants that include the most finished runs (all of them when everything finished, then it
   is the command above with ``--seeds 0 1 2 3 4``), which trains nothing, checks that every run
   was trained with the grid's settings and writes ``evidence-M/results.md`` and ``results.json``
   (when no variant finished for those seeds, ``reproduce grid --losses ce bias`` writes
   ``evidence-M/default/results.md``); limited to ``--aggregate-timeout-s``;
4. a table per model and arm of the finished runs (and their mean final top-1), the runs left
   unfinished or out of results.md, and ``evidence_grid.json``: the settings, every child's
   command, start, wall time and exit status, the aggregation, what finished, and
   :func:`biasloss._provenance.environment` (versions, CPU, git state; ``--commit`` names the
   commit where the tree has no ``.git``), plus the GPU's name; with ``--archive``, a ``.tar.gz``
   of ``--out`` without checkpoints.

Exit status 0 also when the budget left runs unfinished (they are named); 1 when a child or an
aggregation failed for another reason. Only the standard library here: all training is in the
children. A finished grid is published without its checkpoints: records of finished runs are
enough to continue it (``reproduce`` counts a run with a record as finished) or to aggregate it
again on any machine with the printed aggregation command.

Size: the whole grid trains 2 models x 5 arms x 5 seeds x epochs x 60k images = 3 M images an
epoch of the plan (45 M at 15 epochs), plus 10k test images per run and epoch; at an aggregate R
images per second across the children it needs about 3 M x epochs / R seconds. What the budget
does not reach is resumed by running the same command again on the same ``--out``.

On the device machine (one H200, 16 cores; ``python3`` has torch, torchvision and timm; nothing
can be installed or downloaded; only files at most two folders below ``$OUT``, 8 of them, come
back), as the first call. Before it, here, in the repository root (``/data/`` is git-ignored, so
the 30 MB of Fashion-MNIST travel only when ``carry`` names them; the loader finds them in
``$BIASLOSS_DATA/FashionMNIST/raw``)::

    mkdir -p data/FashionMNIST/raw && cp /usr/share/datasets/fashion-mnist/*.gz data/FashionMNIST/raw/
    git rev-parse HEAD    # the commit to pass as --commit (commit first: the tree there has no .git)

then ``run`` with ``carry: ["data"]``, ``timeout_s: 590`` and this command (COMMIT replaced)::

    export BIASLOSS_DATA=$PWD/data PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1; SECONDS=0
    timeout -k 10 300 python3 benchmarks/device_check.py --out $OUT/device_check --commit COMMIT \\
        >$OUT/device_check.log 2>&1
    echo "device_check: exit $? after $SECONDS s" >>$OUT/device_check.log; mv $OUT/device_check/device_check.json $OUT/
    tar czf $OUT/device_check.tar.gz --exclude='*.pt' -C $OUT device_check && rm -rf $OUT/device_check
    python3 benchmarks/evidence_grid.py --out /tmp/evidence-gpu --archive $OUT/evidence-gpu.tar.gz --device cuda \\
        --budget-s $((450 - SECONDS)) --aggregate-timeout-s 60 --commit COMMIT 2>&1 | tee $OUT/evidence_grid.log
    cp /tmp/evidence-gpu/evidence_grid.json $OUT/; tail -n 30 $OUT/device_check.log

``device_check.py`` (five 1-epoch trainings: fp32, bf16, fp16, ``--compile`` and ``--compile
--compile-mode reduce-overhead``, an eval of each and the data benchmark; estimated at 3-5 minutes,
not yet measured on a GPU: its docstring) writes everything under ``$OUT/device_check`` and gets
at most 300 s (``timeout`` stops its children too; its ``device_check.json``, rewritten after
every step, and its logs so far still come back). That folder holds more files than the 8 that
come back, checkpoints among them, so its record moves up to ``$OUT`` and the rest is packed
without checkpoints and removed. The grid's training gets the rest of 450 s, then up to
``--grace-s`` (30) to stop the children and 60 s to aggregate (nothing is trained then: seconds):
the command ends by 540 s, about 9 minutes. Six files come back (``device_check.log``, ``.json``
and ``.tar.gz``, ``evidence_grid.log`` and ``.json``, ``evidence-gpu.tar.gz``); ``tar xzf
evidence-gpu.tar.gz -C docs/results`` publishes the grid as ``docs/results/evidence-gpu/``.

A dry run of the same on the CPU (digits, tiny)::

    OMP_NUM_THREADS=1 python benchmarks/evidence_grid.py --out /tmp/eg --device cpu --dataset digits \\
        --limit 128 --epochs 1 --seeds 0 1 --models skipblocknet_xs --jobs 2 --budget-s 300
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

MODELS = ("skipblocknet_xs", "cifar_shufflenetv2_x0_5")
VARIANTS = ("ce-x-c", "rank", "running_min")
SEEDS = (0, 1, 2, 3, 4)
#: the default runs every variant is compared with: arm -> loss, all in <out>/evidence-M/default/
DEFAULT_ARMS = {"ce": "ce", "bias": "bias"}


@dataclass
class Arm:
    """One arm of the grid: its runs train ``loss`` into ``evidence-M/<part>/``."""

    name: str
    part: str
    loss: str


@dataclass
class Child:
    """One ``biasloss`` process (an attempt of it): a (model, seed) of the grid or an aggregation."""

    name: str
    argv: list[str]
    log: Path
    threads: int
    attempt: int = 0
    proc: subprocess.Popen | None = None
    start: float | None = None
    wall_s: float | None = None
    rc: int | None = None
    stopped: bool = False  # sent SIGTERM by the budget or by a signal to this script

    def record(self, t0: float, out: Path) -> dict[str, Any]:
        return {"name": self.name, "attempt": self.attempt, "command": shlex.join(self.argv), "cwd": str(out),
                "omp_threads": self.threads, "log": str(self.log.relative_to(out)),
                "start_s": None if self.start is None else round(self.start - t0, 1),
                "wall_s": None if self.wall_s is None else round(self.wall_s, 1),
                "exit_code": self.rc, "stopped_by_budget": self.stopped}


class Stop:
    """SIGTERM / SIGINT: the first wraps up (as when the budget ends), a second stops at once."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum, frame) -> None:
        self.count += 1
        print(f"evidence grid: {signal.Signals(signum).name} received"
              + (", stopping the children" if self.count == 1 else ", ending now"), flush=True)


def arms_of(variants: list[str]) -> list[Arm]:
    """The arms: ce and bias (``default/``), then each variant with the loss its ablation trains."""
    from biasloss.analysis.reproduce import ABLATIONS

    return ([Arm(name, "default", loss) for name, loss in DEFAULT_ARMS.items()]
            + [Arm(v, v, ABLATIONS[v].get("loss", "bias")) for v in variants])


def model_dir(model: str) -> str:
    return f"evidence-{model}"


def record_path(out: Path, model: str, arm: Arm, seed: int) -> Path:
    """Where ``reproduce`` keeps a finished run's record (it exists once the run finished)."""
    return out / model_dir(model) / arm.part / "records" / f"{model}-{arm.loss}-s{seed}.json"


def finished(out: Path, models: list[str], arms: list[Arm], seeds: list[int]) -> dict[str, dict[str, list[int]]]:
    """model -> arm -> the seeds whose run finished."""
    return {m: {a.name: [s for s in seeds if record_path(out, m, a, s).is_file()] for a in arms} for m in models}


def choose_aggregation(done: dict[str, list[int]], variants: list[str],
                       seeds: list[int]) -> tuple[list[int], list[str]]:
    """The seeds and variants of one model's aggregation: seeds whose ce and bias runs finished,
    and variants finished for every one of them, the choice that includes the most finished runs
    (then the most seeds). ``([], [])`` when no seed has both default runs."""
    best: tuple[tuple[int, int], list[int], list[str]] = ((0, 0), [], [])
    for k in range(len(variants) + 1):
        for chosen in itertools.combinations(variants, k):
            ok = [s for s in seeds if all(s in done[arm] for arm in (*DEFAULT_ARMS, *chosen))]
            score = (len(ok) * (len(DEFAULT_ARMS) + k), len(ok))
            if score > best[0]:
                best = (score, ok, list(chosen))
    return best[1], best[2]


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    if (SRC / "biasloss").is_dir():  # the children run this checkout's biasloss
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    if env.get("BIASLOSS_DATA"):  # the children run in --out: a relative data place would move
        env["BIASLOSS_DATA"] = str(Path(env["BIASLOSS_DATA"]).expanduser().resolve())
    return env


def threads_for(args: argparse.Namespace, processes: int) -> int:
    if args.threads:
        return args.threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) // max(1, processes))


def common_options(args: argparse.Namespace) -> list[str]:
    """The options every ``reproduce`` call of the grid shares (a run's identity among them)."""
    opts = ["--dataset", args.dataset, "--epochs", str(args.epochs), "--device", args.device, "--no-progress",
            "--variance"]
    if args.limit:
        opts += ["--limit", str(args.limit)]
    if args.data_dir:
        opts += ["--data-dir", str(Path(args.data_dir).expanduser().resolve())]
    return opts


def launch(child: Child, out: Path, t0: float) -> None:
    child.log.parent.mkdir(parents=True, exist_ok=True)
    with open(child.log, "w") as log:
        log.write(shlex.join(child.argv) + "\n")
        log.flush()
        child.proc = subprocess.Popen(child.argv, cwd=out, env=child_env(child.threads), stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    child.start = time.monotonic()
    again = f" (attempt {child.attempt + 1})" if child.attempt else ""
    print(f"[{child.start - t0:6.1f} s] start {child.name}{again}: {child.log.relative_to(out)}", flush=True)


def run_children(queue: list[Child], *, jobs: int, deadline: float | None, grace_s: float, retries: int,
                 stop: Stop, out: Path, t0: float, on_exit) -> list[Child]:
    """Run ``queue``, ``jobs`` at a time, until done; at ``deadline`` (or a signal) start no more and
    send SIGTERM to the running ones, killing those still there ``grace_s`` later. Returns every
    attempt (the children never started are left out)."""
    pending, running, attempts = deque(queue), [], []
    stopping_since: float | None = None
    while pending or running:
        now = time.monotonic()
        if stopping_since is None and ((deadline is not None and now >= deadline) or stop.count):
            stopping_since = now
            why = "budget reached" if not stop.count else "stop requested"
            print(f"[{now - t0:6.1f} s] {why}: {len(pending)} not started, SIGTERM to {len(running)} running",
                  flush=True)
            pending.clear()
            for child in running:
                child.stopped = True
                child.proc.send_signal(signal.SIGTERM)
        if stopping_since is not None and (now - stopping_since >= grace_s or stop.count > 1):
            for child in running:
                if child.proc.poll() is None:
                    print(f"[{now - t0:6.1f} s] {child.name}: still running, killed", flush=True)
                    child.proc.kill()
        for child in list(running):
            rc = child.proc.poll()
            if rc is None:
                continue
            running.remove(child)
            child.rc, child.wall_s = rc, time.monotonic() - child.start
            how = " (stopped)" if child.stopped else ""
            print(f"[{time.monotonic() - t0:6.1f} s] {child.name}: exit {rc}{how} after {child.wall_s:.1f} s",
                  flush=True)
            if rc != 0 and not child.stopped and stopping_since is None and child.attempt < retries:
                again = Child(child.name, child.argv, child.log.with_name(f"{child.name}.retry{child.attempt + 1}.log"),
                              child.threads, attempt=child.attempt + 1)
                pending.appendleft(again)
            on_exit()
        while stopping_since is None and pending and len(running) < jobs:
            child = pending.popleft()
            launch(child, out, t0)
            running.append(child)
            attempts.append(child)
        time.sleep(0.1)
    return attempts


def aggregation_argv(model: str, seeds: list[int], variants: list[str], common: list[str]) -> tuple[list[str], str]:
    """The call that writes a model's results from its finished runs, and where the results go."""
    exe = [sys.executable, "-m", "biasloss", "reproduce"]
    seed_args = ["--seeds", *map(str, seeds)]
    if variants:
        return ([*exe, "ablation", "--models", model, *seed_args, "--variants", *variants, *common,
                 "--out", model_dir(model)], f"{model_dir(model)}/results.md")
    return ([*exe, "grid", "--models", model, "--losses", *DEFAULT_ARMS.values(), *seed_args, *common,
             "--out", f"{model_dir(model)}/default"], f"{model_dir(model)}/default/results.md")


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def write_archive(out: Path, archive: Path) -> None:
    """``archive`` (.tar.gz): ``out`` without checkpoints, lock files and temporary files."""
    skip = (".pt", ".lock", ".tmp")
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if info.name.endswith(skip) or (out.parent / info.name).resolve() == archive.resolve() else info

    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(out, arcname=out.name, filter=keep)
    os.replace(tmp, archive)


def summary_table(out: Path, models: list[str], arms: list[Arm], seeds: list[int]) -> list[str]:
    """Per model and arm: finished runs of the planned ones, and their mean final top-1."""
    lines = ["| model | " + " | ".join(a.name for a in arms) + " |", "|---|" + "---|" * len(arms)]
    for m in models:
        cells = []
        for a in arms:
            top1 = [json.loads(record_path(out, m, a, s).read_text())["final_top1"] for s in seeds
                    if record_path(out, m, a, s).is_file()]
            mean = f" ({sum(top1) / len(top1):.2f} %)" if top1 else ""
            cells.append(f"{len(top1)}/{len(seeds)}{mean}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        return torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else None
    except Exception as e:  # noqa: BLE001 - the summary must still be written
        return f"unknown ({type(e).__name__}: {e})"


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    head, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the grid's directory (evidence-<model>/, logs/, evidence_grid.json)")
    p.add_argument("--models", nargs="+", default=list(MODELS), metavar="MODEL")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), metavar="SEED")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="NAME",
                   help="ablation variants besides ce and bias (default: ce-x-c rank running_min)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", help="passed to reproduce (default: $BIASLOSS_DATA and the usual places)")
    p.add_argument("--epochs", type=int, default=15, help="epochs of every run (default 15)")
    p.add_argument("--limit", type=int, help="first N train and test images (dry runs; default: all)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--jobs", type=int, default=10, help="children at a time (default 10)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each child (default: $OMP_NUM_THREADS, "
                                               "else cores / jobs)")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="seconds after which no child starts and the running ones are stopped (default 480)")
    p.add_argument("--grace-s", type=float, default=30.0, help="after SIGTERM, seconds before a kill (default 30)")
    p.add_argument("--retries", type=int, default=1, help="restarts of a child that failed before the budget")
    p.add_argument("--aggregate-timeout-s", type=float, default=120.0, help="limit of each aggregation call")
    p.add_argument("--archive", help="also write this .tar.gz of --out without checkpoints")
    p.add_argument("--commit", help="the git commit of the tree, recorded where the tree has no .git")
    args = p.parse_args(argv)
    for name in ("epochs", "limit", "jobs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.budget_s <= 0 or args.grace_s < 0 or args.retries < 0 or args.aggregate_timeout_s <= 0:
        p.error("--budget-s and --aggregate-timeout-s must be > 0, --grace-s and --retries >= 0")
    for name in ("models", "seeds", "variants"):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            p.error(f"--{name} lists a value twice")
    if any(s < 0 for s in args.seeds):
        p.error("--seeds must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = get_args(argv)
    if (SRC / "biasloss").is_dir():
        sys.path.insert(0, str(SRC))
    from biasloss.analysis.reproduce import ABLATIONS

    unknown = [v for v in args.variants if v not in ABLATIONS]
    if unknown:
        print(f"evidence_grid.py: unknown variant {' '.join(unknown)} (known: {' '.join(ABLATIONS)})", file=sys.stderr)
        return 2
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    arms = arms_of(args.variants)
    common = common_options(args)
    stop = Stop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)

    threads = threads_for(args, min(args.jobs, len(args.models) * len(args.seeds)))
    grid = [Child(f"{m}-s{s}", [sys.executable, "-m", "biasloss", "reproduce", "ablation", "--models", m,
                                "--seeds", str(s), "--variants", *args.variants, *common, "--out", model_dir(m)],
                  out / "logs" / f"{m}-s{s}.log", threads)
            for s in args.seeds for m in args.models]  # seed-major: whole seeds first
    t0 = time.monotonic()
    started = time.time()
    print(f"evidence grid: {len(args.models)} models x {len(args.seeds)} seeds x {len(arms)} arms "
          f"({', '.join(a.name for a in arms)}) on {args.dataset}"
          f"{f' (first {args.limit} images)' if args.limit else ''}, {args.epochs} epochs each, device {args.device}; "
          f"{len(grid)} children, {args.jobs} at a time, OMP_NUM_THREADS={threads}; budget {args.budget_s:.0f} s; "
          f"out {out}", flush=True)

    summary: dict[str, Any] = {
        "settings": vars(args) | {"out": str(out), "arms": [vars(a) for a in arms]},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "commands": [], "aggregation": [],
    }
    attempts: list[Child] = []

    def save() -> None:
        summary["commands"] = [c.record(t0, out) for c in attempts]
        summary["wall_s"] = round(time.monotonic() - t0, 1)
        write_json(out / "evidence_grid.json", summary)

    attempts = run_children(grid, jobs=args.jobs, deadline=t0 + args.budget_s, grace_s=args.grace_s,
                            retries=args.retries, stop=stop, out=out, t0=t0, on_exit=save)
    budget_reached = any(c.stopped for c in attempts) or len({c.name for c in attempts}) < len(grid)
    done = finished(out, args.models, arms, args.seeds)

    # aggregation: one call per model over its finished runs (trains nothing)
    aggregations, results = [], {}
    for m in args.models:
        seeds, variants = choose_aggregation(done[m], args.variants, args.seeds)
        if not seeds:
            print(f"{m}: no seed has finished ce and bias runs: nothing to aggregate", flush=True)
            results[m] = None
            continue
        argv_, where = aggregation_argv(m, seeds, variants, common)
        aggregations.append(Child(f"aggregate-{m}", argv_, out / "logs" / f"aggregate-{m}.log",
                                  threads_for(args, len(args.models))))
        results[m] = {"results": where, "seeds": seeds, "arms": [*DEFAULT_ARMS, *variants]}
    if aggregations and stop.count < 2:
        stop.count = 0  # a first signal ended the training; a new one ends the aggregation
        t_agg = time.monotonic()
        done_aggs = run_children(aggregations, jobs=len(aggregations), deadline=t_agg + args.aggregate_timeout_s,
                                 grace_s=10.0, retries=0, stop=stop, out=out, t0=t0, on_exit=lambda: None)
        summary["aggregation"] = [c.record(t0, out) for c in done_aggs]
        for c in done_aggs:
            model = c.name.removeprefix("aggregate-")
            ok = c.rc == 0 and (out / results[model]["results"]).is_file()
            results[model]["written"] = ok
    last = {c.name: c for c in attempts}  # each child's last attempt
    failed = [name for name, c in last.items() if c.rc != 0 and not c.stopped]
    failed += [c["name"] for c in summary["aggregation"] if c["exit_code"] != 0]

    done = finished(out, args.models, arms, args.seeds)
    unfinished = [f"{m}-{a.name}-s{s}" for m in args.models for a in arms for s in args.seeds
                  if s not in done[m][a.name]]
    left_out = [f"{m}-{a.name}-s{s}" for m in args.models for a in arms for s in done[m][a.name]
                if results.get(m) is None or s not in results[m]["seeds"] or a.name not in results[m]["arms"]]
    from biasloss._provenance import environment

    summary.update({"budget_reached": budget_reached, "finished": done, "unfinished": unfinished,
                    "finished_not_in_results": left_out, "results": results, "failed": failed,
                    "exit_codes": dict(Counter(str(c.rc) for c in attempts)), "commit": args.commit,
                    "gpu": gpu_name(args.device), **environment()})
    save()

    print(f"\nevidence grid after {time.monotonic() - t0:.0f} s: finished runs of the planned ones (mean final "
          f"top-1 %); {'budget reached' if budget_reached else 'within the budget'}\n")
    print("\n".join(summary_table(out, args.models, arms, args.seeds)))
    for m, r in results.items():
        if r is None:
            print(f"{m}: no results (no seed with finished ce and bias runs)")
        else:
            state = "written" if r.get("written") else "NOT written (see logs/aggregate-" + m + ".log)"
            print(f"{m}: {r['results']} {state}: seeds {' '.join(map(str, r['seeds']))}, arms {' '.join(r['arms'])}")
    if unfinished:
        print(f"unfinished ({len(unfinished)}): {' '.join(unfinished)}")
    if left_out:
        print(f"finished but not in results.md ({len(left_out)}): {' '.join(left_out)}")
    if failed:
        print(f"FAILED (not the budget; see logs/): {' '.join(failed)}")
    print(f"exit codes of the children: {summary['exit_codes']}; summary {out / 'evidence_grid.json'}")
    if args.archive:
        write_archive(out, Path(args.archive).expanduser().resolve())
        print(f"archive (no checkpoints): {args.archive}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
