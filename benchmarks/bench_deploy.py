"""Deployment: fp32 against int8 in ONNX Runtime and ExecuTorch, SkipblockNet-M against MobileNetV3-Large.

The paper times SkipblockNet-M single-threaded in PyTorch Mobile on phones (Table 2). This runs
the same question on this machine's CPU, in the two runtimes people deploy with, through the
library's own export path (``biasloss.deploy``, which ``biasloss export`` uses):

* ``onnx``: ``torch.onnx.export`` (dynamo), BatchNorm folded, ONNX Runtime on one thread;
  int8 = ONNX Runtime's static QDQ quantization (per-channel int8 weights, uint8 activations);
* ``executorch``: ``torch.export`` lowered to ExecuTorch's XNNPACK backend, one thread;
  int8 = PT2E static quantization with XNNPACK's symmetric per-channel config.

Batch 1, one thread, at 224 px (3 channels, 1000 classes) and at the Fashion-MNIST input size
(1 channel, 28 px, 10 classes; our models in their small-input layout, as the trainer builds
them). The int8 models are calibrated on 16 random images for the timings (the ranges do not
change the kernels' speed). Every variant runs interleaved with all the others of its input
size, one forward each per round, the order rotating every round; reported: the minimum and the
median over ``--rounds`` rounds (wall clock), the ratios int8 / fp32 per model and runtime and
SkipblockNet / MobileNetV3-Large per runtime and precision, and the files' sizes.

``--ablation`` adds, at 224 px, two variants of SkipblockNet-M (random weights, as all the timed
models): ``skipblocknet_m-noskip`` without its two skip blocks and ``skipblocknet_m-relufirst``
with ReLU instead of hard-swish in its first block (MobileNetV3-Large's choice there), so the
int8 time of what SkipblockNet-M adds to MobileNetV3-Large can be read off.

With ``--checkpoint`` (a Fashion-MNIST ``biasloss train`` checkpoint) it also runs
``biasloss export --int8`` on it in both runtimes and reports the test-set top-1 of fp32 and int8.

    python benchmarks/bench_deploy.py --ablation --checkpoint runs/fashion-mnist-skipblocknet_xs-bias-s0/best.pt

Run it alone on the machine: it is a timing, and another process on the same cores slows it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from bench_latency import interleave, loadavg, machine

from biasloss.deploy import executorch_method, onnx_session, quantize_onnx, to_executorch, to_onnx
from biasloss.models import create_model, fuse_bn, list_models
from biasloss.models.skipblocknet import SKIPBLOCKNET_ARCH, SkipblockNet, SkipblockNetCfg

REFERENCE = "torchvision.mobilenet_v3_large"
SETTINGS = {"224": (3, 224, 1000, False), "fashion-mnist": (1, 28, 10, True)}  # channels, side, classes, small input


def _ablated(name: str) -> SkipblockNetCfg:
    """SkipblockNet-M's table without its skip blocks, or with a ReLU first block."""
    stages = SKIPBLOCKNET_ARCH
    if name.endswith("-noskip"):
        stages = tuple(tuple(b for b in stage if b.kind != "skip") for stage in stages)
    else:
        stages = ((replace(stages[0][0], act="relu"),), *stages[1:])
    return SkipblockNetCfg(stages=stages)


ABLATIONS = ("skipblocknet_m-noskip", "skipblocknet_m-relufirst")


def _model(name: str, setting: str) -> torch.nn.Module:
    chans, _, classes, small = SETTINGS[setting]
    torch.manual_seed(0)
    if name in ABLATIONS:
        model = SkipblockNet(cfg=_ablated(name), num_classes=classes, in_chans=chans)
    else:
        model = create_model(name, num_classes=classes, in_chans=chans, small_input=small and name in list_models())
    return fuse_bn(model.eval())


def _variants(name: str, setting: str, runtimes: list[str], tmp: Path) -> dict[str, tuple[Callable[[], object], int]]:
    """name:runtime:precision -> (one forward on a fixed image, file size in bytes)."""
    chans, side, _, _ = SETTINGS[setting]
    model = _model(name, setting)
    x = torch.randn(1, chans, side, side, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randn(1, chans, side, side, generator=g) for _ in range(16)]
    out: dict[str, tuple[Callable[[], object], int]] = {}
    stem = tmp / f"{name.replace('.', '_')}-{setting}"
    if "onnx" in runtimes:
        fp32, int8 = stem.with_suffix(".onnx"), stem.with_suffix(".int8.onnx")
        to_onnx(model, x, fp32, dynamic_batch=False)
        quantize_onnx(fp32, int8, calibration)
        xn = x.numpy()
        for precision, path in (("fp32", fp32), ("int8", int8)):
            session = onnx_session(path, 1)
            feed = {session.get_inputs()[0].name: xn}
            out[f"{name}:onnx:{precision}"] = (lambda s=session, f=feed: s.run(None, f)), path.stat().st_size
    if "executorch" in runtimes:
        for precision, cal in (("fp32", None), ("int8", calibration)):
            path = stem.with_suffix(f".{precision}.pte")
            to_executorch(model, x, path, cal)
            forward = executorch_method(path)
            out[f"{name}:executorch:{precision}"] = (lambda f=forward: f(x)), path.stat().st_size
    return out


def _ratio(times: dict[str, list[float]], a: str, b: str) -> dict[str, float]:
    return {"min": min(times[a]) / min(times[b]), "median": statistics.median(times[a]) / statistics.median(times[b])}


def bench(args: argparse.Namespace, setting: str, tmp: Path) -> dict[str, object]:
    variants: dict[str, tuple[Callable[[], object], int]] = {}
    for name in args.models:
        variants |= _variants(name, setting, args.runtimes, tmp)
    if args.ablation and setting == "224":
        for name in ABLATIONS:
            variants |= _variants(name, setting, ["executorch"], tmp)
    times = {k: v["wall"] for k, v in interleave({k: f for k, (f, _) in variants.items()}, args.rounds, args.warmup).items()}
    chans, side, _, _ = SETTINGS[setting]
    print(f"\n## {setting}: batch 1 x {chans} x {side} x {side}, 1 thread, {args.rounds} interleaved rounds")
    print("| model | runtime | precision | min ms | median ms | file MB | int8 / fp32 (min, median) |")
    print("|---|---|---|---|---|---|---|")
    rows: dict[str, object] = {}
    for key, (_, size) in variants.items():
        name, runtime, precision = key.split(":")
        t = times[key]
        row: dict[str, object] = {"min_ms": min(t) * 1e3, "median_ms": statistics.median(t) * 1e3, "bytes": size}
        gain = ""
        if precision == "int8":
            row["int8_over_fp32"] = _ratio(times, key, f"{name}:{runtime}:fp32")
            gain = f"{row['int8_over_fp32']['min']:.3f}, {row['int8_over_fp32']['median']:.3f}"
        rows[key] = row
        print(f"| {name} | {runtime} | {precision} | {row['min_ms']:.3f} | {row['median_ms']:.3f} | {size / 1e6:.2f} | {gain} |")
    others = [m for m in args.models if m != REFERENCE] + (list(ABLATIONS) if args.ablation and setting == "224" else [])
    if REFERENCE in args.models and others:
        print(f"\n| model / {REFERENCE} | runtime | precision | min | median |\n|---|---|---|---|---|")
        for name in others:
            for runtime in args.runtimes if name not in ABLATIONS else ["executorch"]:
                for precision in ("fp32", "int8"):
                    r = _ratio(times, f"{name}:{runtime}:{precision}", f"{REFERENCE}:{runtime}:{precision}")
                    rows[f"{name}/{REFERENCE}:{runtime}:{precision}"] = r
                    print(f"| {name} | {runtime} | {precision} | {r['min']:.3f} | {r['median']:.3f} |")
    return rows


def accuracy(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    from biasloss.export import export_int8

    result: dict[str, object] = {}
    print(f"\n## top-1 of {args.checkpoint} on its test set, fp32 and int8 ({args.calibrate} calibration images)")
    print("| runtime | fp32 top-1 % | int8 top-1 % | drop (points) | fp32 MB | int8 MB |\n|---|---|---|---|---|---|")
    for runtime in args.runtimes:
        suffix = ".onnx" if runtime == "onnx" else ".pte"
        r = export_int8(args.checkpoint, tmp / f"checkpoint{suffix}", calibrate=args.calibrate, max_drop=100.0)
        result[runtime] = r
        print(f"| {runtime} | {r['top1_fp32']:.2f} | {r['top1_int8']:.2f} | {r['top1_fp32'] - r['top1_int8']:+.2f} "
              f"| {r['bytes'] / 1e6:.2f} | {r['int8_bytes'] / 1e6:.2f} |")
    return result


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["skipblocknet_m", REFERENCE])
    p.add_argument("--runtimes", nargs="+", choices=("onnx", "executorch"), default=["onnx", "executorch"])
    p.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    p.add_argument("--rounds", type=int, default=80)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--ablation", action="store_true",
                   help="also time SkipblockNet-M without skip blocks and with a ReLU first block (ExecuTorch)")
    p.add_argument("--checkpoint", help="a Fashion-MNIST 'biasloss train' checkpoint: top-1 of fp32 and int8")
    p.add_argument("--calibrate", type=int, default=512, help="calibration images for --checkpoint (default 512)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if "executorch" in args.runtimes:
        # ExecuTorch 1.5 sets its thread pool's size only through this function of its bindings
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(1)
    result: dict[str, object] = {"command": " ".join(["python", *sys.argv]), "machine": machine()}
    print(f"machine: {result['machine']}\ncommand: {result['command']}\nload average before: {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as work:
        for setting in args.settings:
            result[setting] = bench(args, setting, Path(work))
        if args.checkpoint:
            result["accuracy"] = accuracy(args, Path(work))
    result["loadavg_after"] = loadavg()
    print(f"\nload average after: {result['loadavg_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
