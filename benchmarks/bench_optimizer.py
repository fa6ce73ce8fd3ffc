"""One optimizer step: torch's fused kernels against its per-tensor loop, on our models' parameters.

``biasloss.train.recipes.build_optimizer`` asks for ``fused=True`` (one kernel over all tensors)
and falls back to the per-tensor form where torch has no fused kernel for the device. This times
``optimizer.step()`` both ways, and the ``foreach`` form between them, for the recipes' optimizers
(SGD with Nesterov momentum, AdamW) on SkipblockNet-XS (the Fashion-MNIST classifier) and on SSD
with a SkipblockNet-XS trunk (the scenes detector), parameter groups as the trainer builds them.
A step matters most where steps are many and small: on 2 CPU cores the scenes detector at batch
8 a process spends about a tenth of its time in the per-tensor AdamW.

    python benchmarks/bench_optimizer.py [--rounds 30] [--threads 1]

Run it alone. Rounds are interleaved (loop, foreach, fused, loop, ...); min and median per step
are printed with the ratio of each median to the loop's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_latency import interleave, loadavg, machine  # noqa: E402

from biasloss.detection.train import build_detector  # noqa: E402
from biasloss.models import create_model  # noqa: E402

FORMS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"skipblocknet_xs (10 classes)": create_model("skipblocknet_xs", num_classes=10),
            "SSD skipblocknet_xs (11 classes)": build_detector("skipblocknet_xs", 224, num_classes=11)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from timm.optim import param_groups_weight_decay

    info = machine()
    print(f"machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, torch {info['torch']}, "
          f"{args.threads} thread(s), load average before: {loadavg()}")
    print("\n| parameters | optimizer | tensors | loop ms | foreach ms | fused ms | fused / loop |"
          "\n|---|---|---|---|---|---|---|")
    for name, model in _models().items():
        for p_ in model.parameters():
            p_.grad = torch.randn_like(p_)
        for optimizer, options in (("SGD nesterov", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
                                   ("AdamW", {"lr": 3e-3})):
            cls = torch.optim.SGD if optimizer.startswith("SGD") else torch.optim.AdamW
            steps = {}
            for form, flags in FORMS.items():
                opt = cls(param_groups_weight_decay(model, 1e-4), **options, **flags)
                opt.step()  # the state (momentum, moments) exists before timing
                steps[form] = opt.step
            times = interleave(steps, rounds=args.rounds, warmup=2)
            ms = {f: [1e3 * t for t in times[f]["wall"]] for f in FORMS}
            med = {f: statistics.median(v) for f, v in ms.items()}
            tensors = sum(1 for _ in model.parameters())
            print(f"| {name} | {optimizer} | {tensors} | "
                  + " | ".join(f"{med[f]:.2f} (min {min(ms[f]):.2f})" for f in FORMS)
                  + f" | {med['fused'] / med['loop']:.2f}x |")
    print(f"\nload average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
