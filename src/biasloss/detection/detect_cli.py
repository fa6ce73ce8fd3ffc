"""``biasloss detect train|eval|show|make-scenes``: the flags of the detection commands, and the calls
of :mod:`biasloss.detection.train`, :mod:`~biasloss.detection.show` and
:mod:`~biasloss.detection.scenes` they make.

A command module of :data:`biasloss.cli.COMMANDS`, imported only when ``biasloss detect`` is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from biasloss.detection.scenes import make_scenes
from biasloss.detection.show import register_show
from biasloss.detection.train import DATASETS, run_detect_eval, run_detect_train
from biasloss.models.detection import HEADS, MIN_SIZE
from biasloss.train.train_cli import add_device_flag

__all__ = ["register"]


def register(subparsers) -> None:
    """Add ``biasloss detect train|eval|show|make-scenes`` to the command line's ``subparsers``."""
    p = subparsers.add_parser("detect")
    sub = p.add_subparsers(dest="detect_command", metavar="ACTION", required=True)
    sizes = {name: data["size"] for name, data in DATASETS.items()}
    t = sub.add_parser("train", help="train SSD; mAP on the test split every epoch")
    t.add_argument("--data-dir", help="the folder holding VOCdevkit/ (torchvision's VOCDetection layout)")
    t.add_argument("--dataset", choices=tuple(DATASETS),
                   help="voc (default: train VOC2012 trainval, test VOC2007 test, the paper's recipe) or scenes "
                        "(the output of 'detect make-scenes': its train and test splits, 10 garment classes, "
                        "its own recipe)")
    t.add_argument("--model", help="skipblocknet_xs/s/m/l (default: the data set's, skipblocknet_s for VOC as in "
                                   "Table 6)")
    t.add_argument("--head", choices=HEADS, help="prediction heads: ssd (3x3 convolutions, the paper's) or ssdlite "
                                                 "(separable, MobileNetV2's SSDLite; about a seventh of the "
                                                 "multiply-adds) (default: the data set's)")
    t.add_argument("--init", help="classification weights for the backbone (a 'biasloss train' checkpoint or a "
                                  "state dict)")
    t.add_argument("--year", help="training year (default: the data set's, VOC 2012)")
    t.add_argument("--train-set", help="default trainval (VOC), train (scenes)")
    t.add_argument("--test-year", help="default 2007 (11-point AP); other years use the exact area")
    t.add_argument("--test-set", help="default test")
    t.add_argument("--image-size", dest="size", type=int,
                   help=f"input side in pixels, at least {MIN_SIZE} (default: the data set's, "
                        f"{sizes['voc']} for VOC and {sizes['scenes']} for the scenes, whatever size make-scenes "
                        "drew them at)")
    t.add_argument("--size", dest="size", type=int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the old name, hidden: --image-size as in profile and export
    for name, typ, text in (("epochs", int, "default: the recipe's"),
                            ("batch-size", int, "per process (default: the recipe's)"),
                            ("lr", float, "default: the recipe's"), ("weight-decay", float, "default: the recipe's"),
                            ("seed", int, "default 0"),
                            ("workers", int, "data loading processes (default: 4, at most the CPU count; 0: none)"),
                            ("limit", int, "use the first N train and test images"),
                            ("stop-after", int, "stop after this epoch (resume later)")):
        t.add_argument(f"--{name}", type=typ, help=text)
    t.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"),
                   help="mixed precision (default auto: bf16 on CUDA, full precision on the CPU)")
    t.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None,
                   help="keep contiguous memory format (channels-last trains SSD 1.5x faster on the CPU)")
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the training step")
    t.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars (they are off anyway when stderr is not a terminal)")
    t.add_argument("--out", help="run directory (default runs/<dataset>-ssd-<model>-s<seed>)")
    t.add_argument("--resume", metavar="CKPT", help="continue a run from its last.pt")
    add_device_flag(t)
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="mAP of a detect checkpoint on its test split")
    e.add_argument("--checkpoint", required=True, help="a 'biasloss detect train' checkpoint (last.pt, best.pt)")
    e.add_argument("--data-dir", help="the folder holding VOCdevkit/ (default: the checkpoint's)")
    e.add_argument("--test-set", help="the image set to score (default: the one the run was scored on, e.g. test; "
                                      "val for the scenes' val split)")
    e.add_argument("--workers", type=int, help="data loading processes (default: the run's)")
    e.add_argument("--limit", type=int, help="score the first N test images (default: the run's own --limit)")
    add_device_flag(e)
    e.add_argument("--json", action="store_true", help="print one JSON object: map, ap per class, images, epoch")
    e.set_defaults(func=_eval)
    register_show(sub)
    m = sub.add_parser("make-scenes", help="write the Fashion-MNIST scenes detection dataset in VOC's layout",
                       description="Fashion-MNIST garments, tinted and scaled, on cluttered backgrounds: a "
                                   "deterministic stand-in for PASCAL VOC, read by VOCBoxes(..., classes="
                                   "SCENE_CLASSES). Defaults: 10,000 train, 1000 val and 1000 test scenes of 128 px, "
                                   "seed 0.")
    m.add_argument("--out", required=True, help="a new or empty directory (it will hold VOCdevkit/VOC2007)")
    m.add_argument("--train", type=int, help="train scenes (default 10000), garments from Fashion-MNIST's train split")
    m.add_argument("--val", type=int, help="val scenes for choosing settings (default 1000, 0: none), garments from "
                                           "Fashion-MNIST's train split too; trainval lists train and val")
    m.add_argument("--test", type=int, help="test scenes (default 1000), garments from its test split")
    m.add_argument("--image-size", dest="size", type=int, help="image side in pixels, 48..512 (default 128)")
    m.add_argument("--size", dest="size", type=int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the old name, hidden: --image-size everywhere
    m.add_argument("--seed", type=int, help="default 0")
    m.add_argument("--data-dir", help="where Fashion-MNIST is looked for (default: standard places)")
    m.set_defaults(func=_make_scenes)


def _train(args) -> int:
    run_detect_train(args)
    return 0


def _eval(args) -> int:
    result = run_detect_eval(args)
    print(json.dumps(result) if args.json else f"{result['model']} SSD: mAP {result['map']:.2f} % on "
          f"{result['images']} {result['test_set']} images (epoch {result['epoch']}); AP per class: "
          + ", ".join(f"{name} {ap:.1f} %" for name, ap in result["ap"].items()))
    return 0


def _make_scenes(args) -> int:
    given = {k: getattr(args, k) for k in ("train", "val", "test", "size", "seed") if getattr(args, k) is not None}
    existed = (Path(args.out) / "scenes.json").is_file()
    out = make_scenes(args.out, data_dir=args.data_dir, **given)
    info = json.loads((out / "scenes.json").read_text())
    p, objects = info["params"], info["objects"]
    print(f"{'already there, the same dataset' if existed else 'wrote'}: {p['train']} train scenes "
          f"({objects['train']} objects), {p.get('val', 0)} val scenes ({objects.get('val', 0)} objects) and "
          f"{p['test']} test scenes ({objects['test']} objects), "
          f"{p['size']}x{p['size']} px, seed {p['seed']}, in {out} (VOCdevkit/VOC2007)")
    return 0
