"""Cost of the Bias Loss over plain cross-entropy (forward + backward).

The setting of issue #2: a batch of 256 ImageNet-sized feature maps (960 x 7 x 7, the
SkipblockNet-M / MobileNetV3-Large head) and 1000-class logits. The extra work of the Bias Loss
is one reduction over the detached features (their per-sample variance); the script reports it
next to one plain read of the same features (``features.sum()``), the floor for any method that
looks at every value once.

    python benchmarks/bench_loss.py [--batch 256] [--reps 30] [--threads N] [--channels-last]

Repetitions are interleaved (ce, bias, variance, read, ce, ...); min and median are printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from biasloss import bias_loss, feature_variance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shape", type=int, nargs=3, default=(960, 7, 7))
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    features = torch.randn(args.batch, *args.shape, generator=g).to(device)
    if args.channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    logits0 = torch.randn(args.batch, args.classes, generator=g).to(device)
    target = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)

    def ce():
        logits = logits0.clone().requires_grad_()
        F.cross_entropy(logits, target).backward()

    def bias():
        logits = logits0.clone().requires_grad_()
        bias_loss(logits, target, features).backward()

    cases = {
        "cross_entropy fwd+bwd": ce,
        "bias_loss fwd+bwd": bias,
        "feature_variance": lambda: feature_variance(features),
        "torch.var (Welford) ref.": lambda: torch.var(features, dim=(1, 2, 3)),
        "features.sum() (one read)": lambda: features.sum((1, 2, 3)),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(args.reps):
        for name, fn in cases.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)

    mb = features.numel() * features.element_size() / 2**20
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} device={device}")
    print(f"features {tuple(features.shape)} ({mb:.0f} MiB, "
          f"{'channels_last' if args.channels_last else 'contiguous'}), logits {tuple(logits0.shape)}, "
          f"{args.reps} interleaved reps")
    print(f"{'case':28s} {'min ms':>9s} {'median ms':>10s}")
    for name, ts in times.items():
        print(f"{name:28s} {min(ts):9.3f} {statistics.median(ts):10.3f}")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"ratio bias/ce (median): {med['bias_loss fwd+bwd'] / med['cross_entropy fwd+bwd']:.2f}x; "
          f"extra cost {med['bias_loss fwd+bwd'] - med['cross_entropy fwd+bwd']:.2f} ms = "
          f"{(med['bias_loss fwd+bwd'] - med['cross_entropy fwd+bwd']) / med['features.sum() (one read)']:.2f} "
          f"reads of the features")


if __name__ == "__main__":
    main()
