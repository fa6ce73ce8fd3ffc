"""``biasloss export``: a checkpoint to ONNX, ExecuTorch or TorchScript (:mod:`biasloss.export`).

A command module of :data:`biasloss.cli.COMMANDS`, imported only when ``biasloss export`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register"]


def register(subparsers) -> None:
    """Add ``biasloss export`` to the command line's ``subparsers``."""
    from biasloss.export import FORMATS
    from biasloss.train.train_cli import add_device_flag

    p = subparsers.add_parser("export", description="Export the weights a checkpoint was evaluated with (EMA when "
                                                    "kept) at its training resolution; the file is run and compared "
                                                    "with PyTorch.")
    p.add_argument("--checkpoint", required=True, help="a last.pt or best.pt written by train")
    p.add_argument("--out", required=True, help="model.onnx (ONNX), model.pte (ExecuTorch, XNNPACK, batch 1; "
                                                "metadata in model.pte.json) or model.pt (TorchScript)")
    p.add_argument("--format", choices=FORMATS, help="default: from --out's suffix (.onnx, .pte, .pt/.ts); a "
                                                     "suffix that names another format is refused")
    p.add_argument("--image-size", type=int, help="input side in pixels (default: the training resolution)")
    p.add_argument("--input-size", dest="image_size", type=int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # profile's old name, hidden: --image-size everywhere
    p.add_argument("--static-batch", action="store_true", help="ONNX: fix the batch size (default: any)")
    p.add_argument("--no-fuse-bn", dest="fuse", action="store_false", help="keep the BatchNorm layers")
    p.add_argument("--no-check", dest="check", action="store_false", help="do not run the exported file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_device_flag(p, "where the checkpoint's model computes the PyTorch reference the exported file is "
                       "compared with; the ONNX, ExecuTorch, TorchScript and int8 files are always traced and "
                       "exported on the CPU, and run there")
    q = p.add_argument_group("int8", "static post-training quantization (pip install -e '.[deploy]'): "
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


class _Terminated(BaseException):
    """SIGTERM arrived during an export (a ``BaseException``, like ``KeyboardInterrupt``: no
    ``except Exception`` of a library swallows it on its way out of :func:`biasloss._io.atomic_path`)."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _export(args) -> int:
    """The export, where SIGTERM, like Ctrl-C, removes the half-written files: exit status 143."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return _run_export(args)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _run_export(args)
    except _Terminated:
        print(f"biasloss: export to {args.out} stopped by SIGTERM; its temporary files removed", file=sys.stderr)
        return 128 + int(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_export(args) -> int:
    from biasloss.errors import InputError
    from biasloss.export import export_checkpoint, export_int8

    int8_options = {"calibrate": args.calibrate, "max_drop": args.max_drop, "data_dir": args.data_dir,
                    "calibration_dataset": args.calibration_dataset}
    given = {key: value for key, value in int8_options.items() if value is not None}
    if given and not args.int8:
        raise InputError(f"{', '.join('--' + key.replace('_', '-') for key in given)} only apply with --int8")
    options = {"fmt": args.format, "image_size": args.image_size, "dynamic_batch": not args.static_batch,
               "fuse": args.fuse, "check": args.check, "device": args.device}
    if args.int8:  # a minute or more: say which phase it is in
        result = export_int8(args.checkpoint, args.out, **options, **given,
                             progress=lambda line: print(f"biasloss export: {line}", file=sys.stderr, flush=True))
    else:
        result = export_checkpoint(args.checkpoint, args.out, **options)
    if args.json:
        print(json.dumps(result))
        return 0
    checked = (f"max |difference| to PyTorch {result['max_abs_diff']:.2e}" if result["checked"]
               else "not checked" + ("" if not args.check else " (pip install -e '.[deploy]' to run it)"))
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
