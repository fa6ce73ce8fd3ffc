"""A detector shown to learn: SSD with a SkipblockNet backbone on the Fashion-MNIST scenes.

Makes the scenes (``biasloss detect make-scenes``, the defaults: 10,000 train, 1000 val and 1000
test scenes of 128 px) unless they are there, then trains with ``biasloss detect train --dataset
scenes`` (the data set's own recipe unless flags say otherwise) and prints, per epoch, the VOC
mAP@0.5 on all 1000 test scenes, the training time so far and the wall time so far (training and
the evaluations), then the first epoch at or above ``--target`` (70 %) and whether it came within
``--budget`` seconds (20 minutes) by either clock. With ``--init CKPT`` (e.g. the default
``biasloss train`` checkpoint, a Fashion-MNIST classifier) it runs the same with the backbone
started from those weights: the paper's transfer setting in miniature. ``--nproc 2`` trains with
torchrun, two processes of one thread each (on 2 cores that steps 1.6x faster than one process
of two threads: depthwise convolutions split poorly across threads); pass ``-- --batch-size 8``
with it to keep the recipe's global batch of 16. Last, ``biasloss detect eval`` scores the final
checkpoint again, which must give the logged mAP, and scores it on the val scenes when the
dataset has them: compare settings by that figure, never by the test scenes'. A JSON record of
all of it, with the versions and the code's git commit and dirty flag, goes to
``--out``/result.json.

    python benchmarks/bench_detect_scenes.py --data /tmp/scenes --out runs/bench-scenes --nproc 2 -- --batch-size 8
    python benchmarks/bench_detect_scenes.py --data /tmp/scenes --out runs/bench-scenes-init --nproc 2 \\
        --init runs/fashion-mnist-skipblocknet_xs-bias-s0/last.pt -- --batch-size 8

Run it alone on the machine: it is a timing, and another process on the same cores slows it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from biasloss._provenance import environment


def _biasloss(*args: str) -> list[str]:
    return [sys.executable, "-m", "biasloss", *args]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the scenes' directory (made here if it does not exist)")
    p.add_argument("--out", required=True, help="a new run directory")
    p.add_argument("--init", help="backbone weights: a 'biasloss train' checkpoint")
    p.add_argument("--target", type=float, default=70.0, help="mAP to reach, percent (default 70)")
    p.add_argument("--budget", type=float, default=1200.0, help="seconds to reach it in (default 1200)")
    p.add_argument("--nproc", type=int, default=1,
                   help="training processes (torchrun, one thread each; default 1: one process, all threads)")
    p.add_argument("train_args", nargs="*", help="more 'detect train' flags after --, e.g. -- --image-size 160")
    args = p.parse_args(argv)

    data, out = Path(args.data), Path(args.out)
    if not (data / "scenes.json").is_file():
        subprocess.run(_biasloss("detect", "make-scenes", "--out", str(data)), check=True)
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}", "-m",
               "biasloss"] if args.nproc > 1 else _biasloss())
    train = [*launch, "detect", "train", "--dataset", "scenes", "--data-dir", str(data), "--out", str(out),
                      "--no-progress", *(["--init", args.init] if args.init else []), *args.train_args]
    threads = 1 if args.nproc > 1 else torch.get_num_threads()  # torchrun gives each process OMP_NUM_THREADS=1
    env = environment()  # the versions and the code (git commit, dirty tree) as the training starts
    print(f"machine: {env['machine']['cpu']}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{args.nproc} process(es) x {threads} thread(s)")
    command = " ".join(["torchrun", *train[3:]] if args.nproc > 1 else ["biasloss", *train[3:]])
    print("command:", command, flush=True)
    subprocess.run(train, check=True)

    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    elapsed, trained, rows, reached = 0.0, 0.0, [], None
    print("\n| epoch | train loss | mAP@0.5 (%) | training time so far (s) "
          "| wall time so far, with the evaluations (s) |"
          "\n|---|---|---|---|---|")
    for m in lines:
        elapsed += m["time_s"]
        trained += m["train_s"]
        rows.append({"epoch": m["epoch"], "train_loss": m["train_loss"], "map": m["map"], "train_s": round(trained, 1),
                     "elapsed_s": round(elapsed, 1)})
        print(f"| {m['epoch']} | {m['train_loss']:.3f} | {m['map']:.2f} | {trained:.0f} | {elapsed:.0f} |")
        if reached is None and m["map"] >= args.target:
            reached = rows[-1]
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    cfg = ckpt["args"]
    print(f"\nSSD ({cfg.get('head', 'ssd')} heads) on {cfg['model']} at {cfg['size']} px, batch {cfg['batch_size']}, "
          f"lr {cfg['lr']}, "
          f"{cfg['epochs']} epochs, init {cfg.get('init') or 'none (from scratch)'}")
    if reached is None:
        print(f"did not reach {args.target} % mAP (best {max(r['map'] for r in rows):.2f} %)")
    else:
        for clock, key in (("training time", "train_s"), ("wall time with the evaluations", "elapsed_s")):
            within = reached[key] <= args.budget
            print(f"reached {args.target} % mAP at epoch {reached['epoch']} after {reached[key]:.0f} s of {clock}: "
                  f"{'within' if within else 'NOT within'} the {args.budget:.0f} s budget")
    check = subprocess.run(_biasloss("detect", "eval", "--checkpoint", str(out / "last.pt"), "--json"),
                           check=True, capture_output=True, text=True)
    evaluated = json.loads(check.stdout)["map"]
    logged = lines[-1]["map"]
    agrees = evaluated == logged  # the ranks evaluate the weights last.pt holds (their BatchNorm statistics too)
    print(f"detect eval of last.pt (one process): mAP {evaluated:.4f} (logged {logged:.4f}"
          f"{'' if args.nproc == 1 else f' by {args.nproc} processes'}): {'agrees' if agrees else 'DISAGREES'}")
    val_map, val_list = None, data / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "val.txt"
    if val_list.is_file() and val_list.read_text().strip():  # scenes made before val scenes existed have none
        scored = subprocess.run(_biasloss("detect", "eval", "--checkpoint", str(out / "last.pt"), "--test-set", "val",
                                          "--json"), check=True, capture_output=True, text=True)
        val_map = json.loads(scored.stdout)["map"]
        print(f"val scenes (for choosing settings): mAP {val_map:.4f}")
    record = {"machine": env["machine"]["cpu"], "cpus": os.cpu_count(), "threads": threads,
              "torch": torch.__version__, "versions": env["versions"], "git": env["git"], "command": command,
              "processes": args.nproc, "settings": cfg, "epochs": rows,
              "target": args.target, "budget_s": args.budget, "reached": reached, "eval_map": evaluated,
              "eval_agrees": agrees, "val_map": val_map}
    (out / "result.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0 if agrees else 1


if __name__ == "__main__":
    sys.exit(main())
