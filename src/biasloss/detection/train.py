"""``biasloss detect train|eval|show``: SSD with a SkipblockNet backbone on PASCAL VOC (paper
Table 6) or on the Fashion-MNIST scenes; ``biasloss detect make-scenes`` writes those (:mod:`.scenes`).

Detection is a task of the one training loop (:mod:`biasloss.train.loop`), as classification is:
the same engine step with :class:`~biasloss.train.engine.DetectorObjective`, mixed precision
(``--amp``), torchrun DDP, a checkpoint on Ctrl-C / SIGTERM, progress bars, a NaN loss that stops
the run with the last good checkpoint kept, exact resume (:class:`~biasloss.data.DetectionLoader`
seeds every sample's augmentation), and ``metrics.jsonl`` with one ``{"epoch", "train_loss",
"map", "lr", "time_s", "train_s", "train_img_s"}`` line per epoch (``time_s`` with the
evaluation, ``train_s`` without). The recipes are :data:`DATASETS`' own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from biasloss._checks import positive, positive_flags, try_input
from biasloss.data import DetectionLoader
from biasloss.detection.metrics import voc_map
from biasloss.detection.scenes import SCENE_CLASSES
from biasloss.detection.settings import IDENTITY, OPTIONS, SIZE_FLAG, DetectConfig, flag, saved_options
from biasloss.detection.voc import VOC_CLASSES, VOCBoxes
from biasloss.errors import InputError
from biasloss.models import create_model, load_pretrained
from biasloss.models.detection import MIN_SIZE, ssd_skipblocknet
from biasloss.train.checkpoint import CheckpointError, load_checkpoint
from biasloss.train.distributed import DistInfo, resolve_device
from biasloss.train.engine import DetectorObjective
from biasloss.train.loop import Run, autocast_dtype, next_free_dir, open_run_dir, train_task
from biasloss.train.recipes import Recipe, build_optimizer, build_scheduler

__all__ = ["DATASETS", "DetectConfig", "build_detector", "detection_scores", "detector_from_checkpoint",
           "evaluate_map", "run_detect_eval", "run_detect_train"]

#: The data sets in VOC's layout: classes, splits, input size, training augmentation and recipe.
#: ``voc``: the paper's (train on VOC2012 trainval, test on VOC2007 test, SSD heads); ``scenes``:
#: ``detect make-scenes``' output, with a recipe sized to 20 minutes on 2 CPU cores and chosen on
#: its val scenes (docs/detection.md).
DATASETS: dict[str, dict[str, Any]] = {
    "voc": {"classes": VOC_CLASSES, "year": "2012", "train_set": "trainval", "test_year": "2007", "test_set": "test",
            "size": 300, "augment": "ssd", "head": "ssd",
            "recipe": Recipe(name="voc-ssd", description="the paper (sec. 5.4): SGD 0.01 cosine, batch 42, "
                             "200 epochs; momentum 0.9 and weight decay 4e-5 of torchvision's SSDLite",
                             epochs=200, batch_size=42, lr=0.01, weight_decay=4e-5, schedule="cosine",
                             model="skipblocknet_s")},
    "scenes": {"classes": SCENE_CLASSES, "year": "2007", "train_set": "train", "test_year": "2007",
               "test_set": "test", "size": 224, "augment": "flip", "head": "ssdlite",
               "recipe": Recipe(name="scenes-ssd", description="SSDLite heads on SkipblockNet-XS at 224 px, AdamW "
                                "3e-3, 0.2 epochs of warm-up, cosine, batch 16, 4 epochs, horizontal flips",
                                epochs=4, batch_size=16, lr=3e-3, optimizer="adamw", weight_decay=1e-4,
                                schedule="cosine", warmup_epochs=0.2, warmup_lr=3e-5, model="skipblocknet_xs")},
}

_SPLITS = ("year", "train_set", "test_year", "test_set", "size", "head")
_RECIPE = ("model", "epochs", "batch_size", "lr", "weight_decay")  # the recipe's unless given
_WORKERS = min(4, os.cpu_count() or 1)  # default DataLoader workers


def build_detector(model: str, size: int, init: str | None = None, num_classes: int = len(VOC_CLASSES),
                   head: str = "ssd") -> nn.Module:
    """SSD on ``model``'s trunk, optionally starting from classification weights (``init``);
    ``num_classes`` counts the background; ``head``: ``ssd`` or ``ssdlite`` (:data:`HEADS`)."""
    trunk = create_model(model, num_classes=1000)
    if init:
        load_pretrained(trunk, init)
    return ssd_skipblocknet(trunk=trunk, num_classes=num_classes, size=size, head=head)


def evaluate_map(model: nn.Module, loader: Any, device: torch.device, use_07_metric: bool,
                 num_classes: int = len(VOC_CLASSES), amp_dtype: torch.dtype | None = None) -> float:
    """VOC mAP@0.5 (percent) of ``model`` over ``loader``'s ``(images, targets)`` batches, over all
    ranks when distributed (each rank detects its shard; the scoring sees every image)."""
    return detection_scores(model, loader, device, use_07_metric, num_classes, amp_dtype)["map"] * 100


@torch.no_grad()
def detection_scores(model: nn.Module, loader: Any, device: torch.device, use_07_metric: bool,
                     num_classes: int = len(VOC_CLASSES), amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """:func:`~biasloss.detection.voc_map` of ``model`` over ``loader`` (see :func:`evaluate_map`):
    ``{"map": fraction, "ap": {label: fraction}}``."""
    model.eval()
    detections, truths = [], []
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    for images, targets in loader:
        with autocast:
            out = model([im.to(device) for im in images])
        detections += [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in out]
        truths += [{k: v.cpu() for k, v in t.items()} for t in targets]
    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (detections, truths))
        detections = [d for part, _ in gathered for d in part]
        truths = [t for _, part in gathered for t in part]
    if not truths:  # every rank sees the same gathered lists: all raise
        raise InputError("nothing to evaluate: the test split holds no images; a mAP over nothing would read 0.0")
    return voc_map(detections, truths, num_classes, use_07_metric=use_07_metric)


def _resolve(args: Any, ckpt: dict[str, Any] | None) -> DetectConfig:
    """The run's settings: the command line over the resumed checkpoint's over the data set's."""
    given = {k: v for k, v in vars(args).items() if k in OPTIONS and v is not None}
    saved = saved_options(ckpt["args"]) if ckpt is not None else {}
    for key in IDENTITY:
        if key in given and key in saved and given[key] != saved[key]:
            raise CheckpointError(f"cannot resume: the checkpoint was trained with {flag(key)} "
                                  f"{saved[key]}, not {given[key]}")
    values = {"dataset": "voc", "workers": _WORKERS} | saved | given  # DetectConfig's defaults for the rest
    if values["dataset"] not in DATASETS:
        raise InputError(f"--dataset must be one of {', '.join(DATASETS)}, got {values['dataset']!r}")
    if not values.get("data_dir"):
        raise InputError("--data-dir is required: the folder holding VOCdevkit/")
    data = DATASETS[values["dataset"]]
    recipe: Recipe = data["recipe"]
    values = {key: data[key] for key in _SPLITS} | {key: getattr(recipe, key) for key in _RECIPE} | values
    out = args.out or (str(Path(args.resume).parent) if args.resume else None)
    cfg = DetectConfig.from_mapping(values | {"resume": args.resume, "device": args.device, "out": out})
    positive_flags(vars(cfg), ("epochs", "batch_size", "limit", "stop_after"))
    positive(SIZE_FLAG, cfg.size)
    if cfg.workers < 0:
        raise InputError(f"--workers must be >= 0, got {cfg.workers}")
    positive("--lr", cfg.lr, kind=float)
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise InputError(f"--weight-decay must be a number >= 0, got {cfg.weight_decay}")
    if cfg.size < MIN_SIZE:
        raise InputError(f"{SIZE_FLAG} must be at least {MIN_SIZE} px (SkipblockNet's output stride; smaller, "
                         f"every feature map is a pixel or two and the detector cannot place a box), got {cfg.size}")
    if cfg.batch_size < 2:
        raise InputError("--batch-size must be at least 2 (the smallest extra map's BatchNorm needs two samples)")
    if cfg.out is None:
        cfg.out = str(next_free_dir(Path("runs") / f"{cfg.dataset}-ssd-{cfg.model}-s{cfg.seed}"))
    return cfg


def dataset_split(cfg: DetectConfig, train: bool) -> torch.utils.data.Dataset:
    """The training or the test split of the run's data, cut to ``--limit``; ``detect eval`` reads the
    test split alone (a VOC 2007 test folder without 2012's trainval is enough)."""
    data = DATASETS[cfg.dataset]
    if train:
        split = VOCBoxes(cfg.data_dir, cfg.year, cfg.train_set, train=True, classes=data["classes"],
                         augment=data["augment"])
    else:
        split = VOCBoxes(cfg.data_dir, cfg.test_year, cfg.test_set, train=False, classes=data["classes"])
        if len(split) == 0:  # a mAP over nothing would read 0.0
            raise InputError(f"--data-dir {cfg.data_dir}: the test split (VOC{cfg.test_year} "
                             f"ImageSets/Main/{cfg.test_set}.txt) lists no images")
    return torch.utils.data.Subset(split, range(min(cfg.limit, len(split)))) if cfg.limit else split


def _build_run(cfg: DetectConfig, info: DistInfo, device: torch.device, ckpt: dict[str, Any] | None,
               cleanup: contextlib.ExitStack) -> Run:
    assert cfg.out is not None  # _resolve names the run directory
    out = Path(cfg.out)
    if info.is_main:
        open_run_dir(out, cfg.resume, cleanup)
    recipe = DATASETS[cfg.dataset]["recipe"].override(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, model=cfg.model)
    torch.manual_seed(cfg.seed)
    train, test = dataset_split(cfg, train=True), dataset_split(cfg, train=False)
    if len(train) < recipe.batch_size * info.world_size:
        raise InputError(f"{len(train)} training images are fewer than one batch of {recipe.batch_size}"
                         + (f" x {info.world_size} ranks" if info.enabled else ""))
    train_loader = DetectionLoader(train, batch_size=recipe.batch_size, device=device, train=True, seed=cfg.seed,
                                   rank=info.rank, world_size=info.world_size, drop_last=True,
                                   workers=cfg.workers)
    test_loader = DetectionLoader(test, batch_size=recipe.batch_size, device=device, train=False, rank=info.rank,
                                  world_size=info.world_size, workers=cfg.workers)
    cleanup.callback(train_loader.close)
    cleanup.callback(test_loader.close)
    num_classes = len(DATASETS[cfg.dataset]["classes"])
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_detector(cfg.model, cfg.size, None if ckpt else cfg.init, num_classes, cfg.head).eval()
    # one image through the backbone, in eval mode (no BatchNorm statistics change) and on the CPU, as profile's
    # --image-size: a size that does not fit in memory is an InputError before any work, not a failure mid-epoch
    try_input(model.backbone, (1, 3, cfg.size, cfg.size), f"{SIZE_FLAG} {cfg.size}", working_size=MIN_SIZE)
    model = model.train().to(device=device, memory_format=memory_format)
    train_net: nn.Module = model
    if info.enabled:
        train_net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_net = torch.compile(train_net)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, len(train_loader))
    amp_dtype = autocast_dtype(cfg.amp, device)
    use_07 = cfg.test_year == "2007"
    if info.is_main:
        detector = "SSDLite" if cfg.head == "ssdlite" else "SSD"
        print(f"biasloss detect: {detector} {cfg.size} on {cfg.model}, {cfg.dataset} {cfg.year} "
              f"{cfg.train_set} ({len(train)} images) -> {cfg.test_year} {cfg.test_set}, "
              f"recipe {recipe.name}, {recipe.epochs} epochs, batch {recipe.batch_size}"
              f"{f' x {info.world_size} ranks' if info.enabled else ''}, device {device}, out {out}", flush=True)

    def validate() -> dict[str, Any]:
        return {"map": round(evaluate_map(model, test_loader, device, use_07, num_classes, amp_dtype), 4)}

    return Run(
        out=out, info=info, device=device, model=model, train_net=train_net, objective=DetectorObjective(),
        criterion=nn.Module(), optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
        validate=validate, describe=lambda m: f"mAP {m['map']:.2f} %", score="map", epochs=recipe.epochs,
        seed=cfg.seed, amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None,
        progress=cfg.progress, extra={"args": cfg.to_checkpoint()},
    )


def run_detect_train(args: Any) -> dict[str, Any]:
    """Train SSD as ``args`` (the ``detect train`` options) say; returns the last epoch's metrics."""
    if getattr(args, "init", None) and args.resume:  # the resume's weights are the checkpoint's: --init is ignored
        raise InputError(f"--init {args.init} and --resume {args.resume} cannot be given together: a resume "
                         "continues with the checkpoint's weights (drop --init), a new run starts from --init's "
                         "(drop --resume)")
    ckpt = load_checkpoint(args.resume) if args.resume else None
    if ckpt is not None and "best_map" not in ckpt:
        raise CheckpointError(f"{args.resume} is not a 'biasloss detect train' checkpoint")
    cfg = _resolve(args, ckpt)
    return train_task(lambda info, device, cleanup: _build_run(cfg, info, device, ckpt, cleanup),
                      device=cfg.device, ckpt=ckpt, resume_from=args.resume, stop_after=cfg.stop_after)


def _load_detector(path: str, device: torch.device | str) -> tuple[nn.Module, DetectConfig, dict[str, Any]]:
    """:func:`detector_from_checkpoint`, and the checkpoint."""
    ckpt = load_checkpoint(path)
    if "best_map" not in ckpt:
        raise CheckpointError(f"{path} is not a 'biasloss detect train' checkpoint (a classifier's? "
                              "evaluate those with 'biasloss eval')")
    cfg = DetectConfig.from_checkpoint(ckpt["args"], workers=_WORKERS, batch_size=8)
    model = build_detector(cfg.model, cfg.size, num_classes=len(DATASETS[cfg.dataset]["classes"]), head=cfg.head)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit SSD on {cfg.model}: "
                              f"{str(e).splitlines()[0]}") from None
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return model.to(device=device, memory_format=memory_format).eval(), cfg, ckpt


def detector_from_checkpoint(path: str, device: torch.device | str = "cpu") -> tuple[nn.Module, DetectConfig]:
    """The SSD a ``biasloss detect train`` checkpoint holds, in eval mode on ``device``, and the
    run's settings (:class:`DetectConfig`: ``dataset``, ``model``, ``size``, ``data_dir``, the
    splits, ...; a checkpoint of an older version gets the defaults of the settings with one, such as
    ``head``, that it lacks)."""
    return _load_detector(path, device)[:2]


def run_detect_eval(args: Any) -> dict[str, Any]:
    """The mAP of a checkpoint on its test split, computed as training logged it (same precision)."""
    device = resolve_device(args.device)
    model, cfg, ckpt = _load_detector(args.checkpoint, device)
    cfg = dataclasses.replace(
        cfg, data_dir=args.data_dir or cfg.data_dir, test_set=args.test_set or cfg.test_set,
        limit=cfg.limit if args.limit is None else positive("--limit", args.limit),
        workers=cfg.workers if args.workers is None else args.workers)  # --workers 0: none
    loader = DetectionLoader(dataset_split(cfg, train=False), batch_size=cfg.batch_size, device=device, train=False,
                             workers=cfg.workers)
    classes = DATASETS[cfg.dataset]["classes"]
    try:
        scores = detection_scores(model, loader, device, cfg.test_year == "2007", len(classes),
                                  autocast_dtype(cfg.amp, device))
    finally:
        loader.close()
    return {"map": round(scores["map"] * 100, 4), "images": loader.num_samples, "epoch": ckpt["epoch"],
            "model": cfg.model, "test_set": cfg.test_set,
            "ap": {classes[k]: round(v * 100, 2) for k, v in sorted(scores["ap"].items())}}
