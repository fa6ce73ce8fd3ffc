"""End-to-end training speed: the in-memory data path against the usual torchvision DataLoader pipeline.

Both pipelines train the same model (torchvision's mobilenet_v3_small, 10 classes, its stem
conv taking 1 channel, channels-last) on Fashion-MNIST at 28 px with the same batch size, optimiser and
augmentation (random crop 28 with 4 px zero padding, horizontal flip, optionally rotation):

- in-memory: ``biasloss.data.build_loaders("fashion-mnist", ...)``: one uint8 tensor on the
  device, batches gathered and augmented with batched tensor ops, no workers;
- torchvision: ``torchvision.datasets.FashionMNIST`` + PIL transforms (RandomCrop,
  RandomHorizontalFlip, RandomRotation, ToTensor, Normalize) + ``DataLoader(shuffle=True,
  num_workers=W)``.

Each repetition times ``--steps`` training steps (forward, loss, backward, SGD step) including
creating the epoch's iterator (worker start-up for the DataLoader), or a whole epoch with
``--epoch``. Repetitions alternate between the pipelines; one short untimed warm-up run of each
comes first. Also timed: the data alone (iterating the loader without the model).

    python benchmarks/bench_data.py                     # defaults: batch 256, 60 steps, 5 reps
    python benchmarks/bench_data.py --epoch --reps 3    # whole epochs
    python benchmarks/bench_data.py --rotation 15 --workers 2
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms as T

from biasloss.data import AugmentConfig, build_loaders, find_fashion_mnist, get_dataset_spec


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: the usual places)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=60, help="training steps per repetition")
    p.add_argument("--epoch", action="store_true", help="time a whole epoch (drop_last) instead of --steps")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers (torchvision path)")
    p.add_argument("--crop-padding", type=int, default=4)
    p.add_argument("--no-hflip", dest="hflip", action="store_false")
    p.add_argument("--rotation", type=float, default=0.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads in the training process "
                   "(default: torch's choice)")
    p.add_argument("--skip-data-only", action="store_true", help="skip the data-only timings")
    return p.parse_args(argv)


def make_model(device: torch.device) -> nn.Module:
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
    # channels-last, as the trainer runs it (about 3x faster than NCHW for this model on a CPU).
    # With one input channel both pipelines' batches have the same memory layout.
    return model.to(device, memory_format=torch.channels_last)


def torchvision_root(data_dir: str | None, tmp: Path) -> Path:
    """A torchvision FashionMNIST root (un-gzipped files in FashionMNIST/raw) built from the IDX files
    the library's loader finds (the same places, plain or gz)."""
    files = find_fashion_mnist(data_dir)
    if files is None:
        sys.exit("Fashion-MNIST not found: apt-get install dataset-fashion-mnist, or pass --data-dir")
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for src in files.values():
        plain = raw / src.name.removesuffix(".gz")
        if src.suffix == ".gz":
            with gzip.open(src, "rb") as f, open(plain, "wb") as g:
                shutil.copyfileobj(f, g)
        else:
            shutil.copy(src, plain)
    return tmp


def train_steps(model, opt, batches, steps: int | None, device) -> int:
    """Run up to ``steps`` training steps over ``batches``; returns the number of steps run."""
    loss_fn = nn.CrossEntropyLoss()
    n = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += 1
        if steps is not None and n >= steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n


def consume(batches, steps: int | None) -> int:
    n = 0
    for _ in batches:
        n += 1
        if steps is not None and n >= steps:
            break
    return n


def summary(name: str, times: list[float], steps: int, batch: int) -> str:
    mn, med = min(times), statistics.median(times)
    return (f"  {name:<12} min {mn:7.3f} s  median {med:7.3f} s  ({steps / mn:6.1f} steps/s, "
            f"{steps * batch / mn:8.0f} img/s at min)  all: {' '.join(f'{t:.3f}' for t in times)}")


def main(argv=None) -> None:
    args = get_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = get_dataset_spec("fashion-mnist")
    aug = AugmentConfig(crop_padding=args.crop_padding, hflip=args.hflip, rotation=args.rotation)

    print("machine:  ", platform.platform(), "|", platform.processor() or platform.machine(),
          f"| os.cpu_count()={os.cpu_count()}",
          f"| sched_getaffinity={len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}")
    print("software: ", f"python {platform.python_version()} | torch {torch.__version__} | torchvision "
          f"{torchvision.__version__} | torch threads {torch.get_num_threads()} | device {device}")
    print("command:  ", shlex.join([sys.executable, *sys.argv]))
    print(f"setup:     mobilenet_v3_small (1-channel stem, 10 classes, channels-last), fashion-mnist 28 px, batch {args.batch_size}, "
          f"SGD momentum 0.9, augment {aug}, torchvision workers {args.workers}, reps {args.reps}, "
          f"{'one epoch' if args.epoch else f'{args.steps} steps'} per rep (iterator creation included)")

    ours, _, _ = build_loaders("fashion-mnist", data_dir=args.data_dir, batch_size=args.batch_size, device=device,
                               augment=aug, seed=0, drop_last=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        ops = [T.RandomCrop(28, padding=args.crop_padding)] if args.crop_padding else []
        ops += [T.RandomHorizontalFlip()] if args.hflip else []
        ops += [T.RandomRotation(args.rotation, interpolation=T.InterpolationMode.BILINEAR)] if args.rotation else []
        ops += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
        tv_set = torchvision.datasets.FashionMNIST(str(torchvision_root(args.data_dir, tmp)), train=True,
                                                   transform=T.Compose(ops))
        tv_loader = DataLoader(tv_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                               num_workers=args.workers, pin_memory=device.type == "cuda")
        steps = None if args.epoch else args.steps
        n_steps = len(ours) if args.epoch else min(args.steps, len(ours))
        torch.manual_seed(0)

        def run_ours(epoch: int, model, opt) -> float:
            t = time.perf_counter()
            ours.set_epoch(epoch)
            n = train_steps(model, opt, ours, steps, device)
            assert n == n_steps, n
            return time.perf_counter() - t

        def run_tv(model, opt) -> float:
            t = time.perf_counter()
            n = train_steps(model, opt, tv_loader, steps, device)
            assert n == n_steps, n
            return time.perf_counter() - t

        model_a = make_model(device)
        opt_a = torch.optim.SGD(model_a.parameters(), lr=0.05, momentum=0.9)
        model_b = make_model(device)
        model_b.load_state_dict(model_a.state_dict())
        opt_b = torch.optim.SGD(model_b.parameters(), lr=0.05, momentum=0.9)
        # warm-up (untimed): a few steps of each
        ours.set_epoch(1000)
        train_steps(model_a, opt_a, ours, 3, device)
        train_steps(model_b, opt_b, tv_loader, 3, device)

        t_ours, t_tv = [], []
        for rep in range(args.reps):
            t_ours.append(run_ours(rep, model_a, opt_a))
            t_tv.append(run_tv(model_b, opt_b))
            print(f"  rep {rep}: in-memory {t_ours[-1]:.3f} s, torchvision {t_tv[-1]:.3f} s", flush=True)
        print(f"end to end ({n_steps} training steps of {args.batch_size} per rep):")
        print(summary("in-memory", t_ours, n_steps, args.batch_size))
        print(summary("torchvision", t_tv, n_steps, args.batch_size))
        print(f"  speed-up (torchvision / in-memory): {min(t_tv) / min(t_ours):.2f}x at min, "
              f"{statistics.median(t_tv) / statistics.median(t_ours):.2f}x at median")

        if not args.skip_data_only:
            d_ours, d_tv = [], []
            for rep in range(args.reps):
                t = time.perf_counter()
                ours.set_epoch(100 + rep)
                consume(ours, steps)
                d_ours.append(time.perf_counter() - t)
                t = time.perf_counter()
                consume(tv_loader, steps)
                d_tv.append(time.perf_counter() - t)
            print(f"data only ({n_steps} batches per rep, no model):")
            print(summary("in-memory", d_ours, n_steps, args.batch_size))
            print(summary("torchvision", d_tv, n_steps, args.batch_size))
            print(f"  speed-up (torchvision / in-memory): {min(d_tv) / min(d_ours):.1f}x at min, "
                  f"{statistics.median(d_tv) / statistics.median(d_ours):.1f}x at median")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
