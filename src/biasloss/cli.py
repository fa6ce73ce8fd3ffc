"""The ``biasloss`` command: ``train`` and ``eval`` (more subcommands register themselves here).

Bad input (unknown names, missing or corrupt data or checkpoints, bad sizes) ends with a
one-line ``biasloss: error: ...`` message and exit status 2, never a traceback (set
``BIASLOSS_DEBUG=1`` to see one). A NaN loss exits with status 1, Ctrl-C/SIGTERM with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from biasloss._checks import one_line, positive

__all__ = ["build_parser", "main"]


def _add_train(sub) -> None:
    from biasloss.data import DATASETS
    from biasloss.losses import LOSSES
    from biasloss.train.recipes import RECIPES
    from biasloss.train.runner import DEFAULTS

    p = sub.add_parser("train", help="train a classifier with cross-entropy, focal loss or the Bias Loss",
                       description="Train a classifier; without flags: SkipblockNet-XS with the Bias Loss on "
                                   "Fashion-MNIST, the default recipe (2 epochs, about 7 minutes on a 2-core CPU).")
    p.add_argument("--dataset", help=", ".join(f"{name} (default)" if name == DEFAULTS["dataset"] else name
                                               for name in DATASETS))
    p.add_argument("--data-dir", help="where the dataset lives (default: standard places per dataset)")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset if missing")
    p.add_argument("--model", help="skipblocknet_xs/s/m/l, cifar_* zoo, any timm name, or torchvision.<name> "
                                   "(default: the recipe's)")
    p.add_argument("--loss", choices=tuple(LOSSES), help=f"default: {DEFAULTS['loss']}")
    p.add_argument("--recipe", help=f"{', '.join(RECIPES)} (default: the dataset's)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--alpha", type=float, help="Bias Loss alpha (default 0.3)")
    p.add_argument("--beta", type=float, help="Bias Loss beta (default 0.3)")
    p.add_argument("--scaling", choices=("batch", "running_min", "rank"),
                   help="Bias Loss variance scaling (default batch; rank is ours, beyond the paper)")
    p.add_argument("--clamp", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="Bias Loss weight clamp (default 0.5 1.5)")
    p.add_argument("--no-clamp", dest="clamp", action="store_const", const="none",
                   help="Bias Loss weights unclamped, as in the authors' code")
    p.add_argument("--gamma", type=float, help="focal loss gamma (default 2)")
    p.add_argument("--loss-scale", type=float, metavar="C",
                   help="multiply the training loss by C, any loss (default 1; the CE x c control of "
                        "docs/results.md)")
    p.add_argument("--no-loss-sync", action="store_true",
                   help="under torchrun, scale the Bias Loss per rank instead of over the global batch")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="run directory (default runs/<dataset>-<model>-<loss>-s<seed>, numbered -2, -3, ... when that holds a run)")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="fine-tune from these weights: a biasloss checkpoint (its evaluated weights), the "
                        "authors' skipblocknet-m.pth, or a state dict of the same architecture; a classifier "
                        "for another number of classes starts fresh, the first conv adapts to the channels")
    p.add_argument("--resume", metavar="CKPT", help="continue a run from its last.pt")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop (with a checkpoint) after epoch N")
    p.add_argument("--limit", type=int, help="use only the first N train and test images (smoke tests)")
    _add_runtime(p)
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default=None,
                   help="mixed precision (auto: on CUDA bf16 where supported, else fp16 with GradScaler; "
                        "full precision on the CPU); bf16/fp16 also run on the CPU")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None,
                   help="keep contiguous memory format (channels-last is 1.6-1.8x faster on CPU)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training step's model; the last short batch of each epoch is "
                        "dropped, so that one compilation serves the whole run (evaluation stays eager); "
                        "a resume keeps the run's choice")
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile's mode, implies --compile (default: default); reduce-overhead replays "
                        "CUDA graphs, for small models whose steps are launch-bound")
    p.set_defaults(func=_train)


def _add_runtime(p) -> None:
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--workers", type=int, help="DataLoader workers for folder datasets (default 4)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars (they are off anyway when stderr is not a terminal)")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="top-1 / top-5 of a checkpoint on the test split")
    p.add_argument("--checkpoint", required=True, help="a last.pt or best.pt written by train")
    p.add_argument("--dataset", help="default: the dataset it was trained on")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_runtime(p)
    p.set_defaults(func=_eval)


def _add_export(sub) -> None:
    from biasloss.export import FORMATS

    p = sub.add_parser("export", help="a checkpoint to ONNX, ExecuTorch or TorchScript, BatchNorm folded, checked",
                       description="Export the weights a checkpoint was evaluated with (EMA when kept) at its "
                                   "training resolution; the file is run and compared with PyTorch.")
    p.add_argument("--checkpoint", required=True, help="a last.pt or best.pt written by train")
    p.add_argument("--out", required=True, help="model.onnx (ONNX), model.pte (ExecuTorch, XNNPACK, batch 1; "
                                                "metadata in model.pte.json) or model.pt (TorchScript)")
    p.add_argument("--format", choices=FORMATS, help="default: from --out's suffix")
    p.add_argument("--image-size", type=int, help="input side in pixels (default: the training resolution)")
    p.add_argument("--static-batch", action="store_true", help="ONNX: fix the batch size (default: any)")
    p.add_argument("--no-fuse-bn", dest="fuse", action="store_false", help="keep the BatchNorm layers")
    p.add_argument("--no-check", dest="check", action="store_false", help="do not run the exported file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    q = p.add_argument_group("int8", "static post-training quantization (pip install 'biasloss[deploy]'): "
                                     "ONNX Runtime QDQ for .onnx, XNNPACK's PT2E quantizer for .pte; "
                                     "<out stem>.int8.<suffix> beside the fp32 file, kept when its top-1 on the "
                                     "test split, run in the same runtime, is within --max-drop of the fp32 file's")
    q.add_argument("--int8", action="store_true", help="also write the int8 model, calibrated and evaluated")
    q.add_argument("--calibrate", type=int, metavar="N",
                   help="calibrate on N images of the checkpoint's training split, drawn with a fixed seed and "
                        "preprocessed as at test time (default 512)")
    q.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="fail (keeping the fp32 file) when int8 top-1 is more than this below fp32 (default 1.0)")
    q.add_argument("--data-dir", help="where the dataset lives (default: where training found it)")
    q.add_argument("--calibration-dataset", metavar="NAME",
                   help="default and only choice: the checkpoint's training dataset")
    p.set_defaults(func=_export)


def _export(args) -> int:
    from biasloss.export import export_checkpoint, export_int8

    int8_options = {"calibrate": args.calibrate, "max_drop": args.max_drop, "data_dir": args.data_dir,
                    "calibration_dataset": args.calibration_dataset}
    given = {key: value for key, value in int8_options.items() if value is not None}
    if given and not args.int8:
        raise ValueError(f"{', '.join('--' + key.replace('_', '-') for key in given)} only apply with --int8")
    if args.int8:
        result = export_int8(args.checkpoint, args.out, fmt=args.format, image_size=args.image_size,
                             dynamic_batch=not args.static_batch, fuse=args.fuse, check=args.check, **given)
    else:
        result = export_checkpoint(args.checkpoint, args.out, fmt=args.format, image_size=args.image_size,
                                   dynamic_batch=not args.static_batch, fuse=args.fuse, check=args.check)
    if args.json:
        print(json.dumps(result))
        return 0
    checked = (f"max |difference| to PyTorch {result['max_abs_diff']:.2e}" if result["checked"]
               else "not checked" + ("" if not args.check else " (pip install 'biasloss[deploy]' to run it)"))
    print(f"wrote {result['path']} ({result['format']}, {result['bytes'] / 1e6:.1f} MB, {result['weights']} "
          f"weights, input {'x'.join(map(str, result['input']))}, normalise with mean {result['mean']} "
          f"std {result['std']}); {checked}")
    if args.int8:
        print(f"wrote {result['int8_path']} (int8, {result['int8_bytes'] / 1e6:.1f} MB, "
              f"{result['bytes'] / result['int8_bytes']:.1f}x smaller; {result['quantization']}; "
              f"calibrated on {result['calibration']})")
        runtime = "ExecuTorch" if result["format"].startswith("executorch") else "ONNX Runtime"
        print(f"top-1 on {result['test_images']} test images in {runtime}: fp32 {result['top1_fp32']:.2f} %  "
              f"int8 {result['top1_int8']:.2f} %  drop {result['top1_drop']:+.2f} points")
    return 0


def _train(args) -> int:
    from dataclasses import fields

    from biasloss.train.runner import TrainConfig, run_train

    run_train(TrainConfig(**{field.name: getattr(args, field.name) for field in fields(TrainConfig)}))
    return 0


def _eval(args) -> int:
    from biasloss.train.runner import run_eval

    positive("--batch-size", args.batch_size)
    result = run_eval(args)
    if args.json:
        print(json.dumps(result))
    else:
        other = "" if result["trained_on"] == result["dataset"] else f", trained on {result['trained_on']}"
        print(f"{result['model']} on {result['dataset']} ({result['samples']} test images, "
              f"{result['weights']} weights, epoch {result['epoch']}{other}): "
              f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biasloss",
        description="Bias Loss and SkipblockNet (ICCV 2021): train, evaluate and analyse compact classifiers.",
    )
    from biasloss import __version__

    parser.add_argument("--version", action="version", version=f"biasloss {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_export(sub)
    from biasloss.analysis import register_commands
    from biasloss.detection.train import register as register_detect

    register_detect(sub)

    register_commands(sub)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    from biasloss.data import DatasetNotFoundError
    from biasloss.train.checkpoint import CheckpointError
    from biasloss.train.engine import NonFiniteLossError

    from biasloss._io import OutputError

    return (ValueError, TypeError, FileNotFoundError, DatasetNotFoundError, CheckpointError,
            NonFiniteLossError, PermissionError, IsADirectoryError, NotADirectoryError, OutputError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("biasloss: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as e:
        if os.environ.get("BIASLOSS_DEBUG"):
            raise
        print(f"biasloss: error: {one_line(e)}", file=sys.stderr)
        return 1 if type(e).__name__ == "NonFiniteLossError" else 2
