"""``biasloss detect train|eval``: SSD with a SkipblockNet backbone on PASCAL VOC (paper Table 6);
``biasloss detect make-scenes``: the Fashion-MNIST scenes in VOC's layout (:mod:`.scenes`).

The paper's recipe (section 5.4): VOC 2012 trainval for training, VOC 2007 test for mAP, 300 x 300
input, SGD with learning rate 0.01 and cosine annealing, batch 42, 200 epochs. Defaults follow it;
momentum 0.9 and weight decay 4e-5 (not stated in the paper) are those of torchvision's SSDLite
recipe. Each epoch appends ``{"epoch", "train_loss", "map", "lr", "time_s"}`` to
``metrics.jsonl`` and writes ``last.pt`` / ``best.pt`` atomically; ``--resume`` continues a run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from biasloss.detection.metrics import voc_map
from biasloss.detection.scenes import SCENE_CLASSES, make_scenes
from biasloss.detection.voc import VOC_CLASSES, VOCBoxes, collate
from biasloss.models import create_model, load_pretrained
from biasloss.models.detection import ssd_skipblocknet
from biasloss.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from biasloss.train.distributed import resolve_device
from biasloss.train.engine import NonFiniteLossError

__all__ = ["DATASETS", "build_detector", "detector_from_checkpoint", "evaluate_map", "register", "run_detect_eval", "run_detect_train"]

_DEFAULTS = {"dataset": "voc", "model": "skipblocknet_s", "epochs": 200, "batch_size": 42, "lr": 0.01,
             "weight_decay": 4e-5, "size": 300, "seed": 0, "workers": 4}

#: The data sets in VOC's layout: their classes and their default splits. ``voc``: the paper's
#: (train on VOC2012 trainval, test on VOC2007 test); ``scenes``: ``detect make-scenes``' output.
DATASETS: dict[str, dict[str, Any]] = {
    "voc": {"classes": VOC_CLASSES, "year": "2012", "train_set": "trainval", "test_year": "2007", "test_set": "test"},
    "scenes": {"classes": SCENE_CLASSES, "year": "2007", "train_set": "train", "test_year": "2007",
               "test_set": "test"},
}


def build_detector(model: str, size: int, init: str | None = None, num_classes: int = len(VOC_CLASSES)) -> torch.nn.Module:
    """SSD on ``model``'s trunk, optionally starting from classification weights (``init``);
    ``num_classes`` counts the background."""
    trunk = create_model(model, num_classes=1000)
    if init:
        load_pretrained(trunk, init)
    return ssd_skipblocknet(trunk=trunk, num_classes=num_classes, size=size)


@torch.no_grad()
def evaluate_map(model: torch.nn.Module, loader: DataLoader, device: torch.device, use_07_metric: bool,
                 num_classes: int = len(VOC_CLASSES)) -> float:
    model.eval()
    detections, truths = [], []
    for images, targets in loader:
        out = model([im.to(device) for im in images])
        detections += [{k: v.cpu() for k, v in o.items()} for o in out]
        truths += targets
    return voc_map(detections, truths, num_classes, use_07_metric=use_07_metric)["map"] * 100


def _resolve(args: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    cfg = dict(_DEFAULTS)
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        cfg.update(ckpt["args"])
    splits = ("year", "train_set", "test_year", "test_set")
    cfg.update({k: v for k, v in vars(args).items() if v is not None and k in (*_DEFAULTS, *splits, "data_dir", "init")})
    if cfg["dataset"] not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {cfg['dataset']!r}")
    for key in splits:  # the data set's own splits unless given
        cfg.setdefault(key, DATASETS[cfg["dataset"]][key])
    for key in ("epochs", "batch_size", "size", "workers"):
        if cfg[key] <= 0:
            raise ValueError(f"--{key.replace('_', '-')} must be positive, got {cfg[key]}")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    if not (math.isfinite(cfg["lr"]) and cfg["lr"] > 0):
        raise ValueError(f"--lr must be a positive number, got {cfg['lr']}")
    if not (math.isfinite(cfg["weight_decay"]) and cfg["weight_decay"] >= 0):
        raise ValueError(f"--weight-decay must be a number >= 0, got {cfg['weight_decay']}")
    if cfg["batch_size"] < 2:
        raise ValueError("--batch-size must be at least 2 (the smallest extra map's BatchNorm needs two samples)")
    if not cfg.get("data_dir"):
        raise ValueError("--data-dir is required: the folder holding VOCdevkit/")
    cfg["resume"], cfg["out"] = args.resume, args.out or (str(Path(args.resume).parent) if args.resume else None)
    cfg["out"] = cfg["out"] or f"runs/{cfg['dataset']}-ssd-{cfg['model']}-s{cfg['seed']}"
    return cfg, ckpt


def _loaders(cfg: dict[str, Any], limit: int | None) -> tuple[DataLoader, DataLoader]:
    classes = DATASETS[cfg.get("dataset", "voc")]["classes"]
    train = VOCBoxes(cfg["data_dir"], cfg["year"], cfg["train_set"], train=True, classes=classes)
    test = VOCBoxes(cfg["data_dir"], cfg["test_year"], cfg["test_set"], train=False, classes=classes)
    if limit:
        train = torch.utils.data.Subset(train, range(min(limit, len(train))))
        test = torch.utils.data.Subset(test, range(min(limit, len(test))))
    if len(train) < cfg["batch_size"]:
        raise ValueError(f"{len(train)} training images are fewer than one batch of {cfg['batch_size']}")
    common = dict(num_workers=cfg["workers"], collate_fn=collate, persistent_workers=False)
    g = torch.Generator().manual_seed(cfg["seed"])
    return (DataLoader(train, cfg["batch_size"], shuffle=True, drop_last=True, generator=g, **common),
            DataLoader(test, cfg["batch_size"], shuffle=False, **common))


def run_detect_train(args: Any) -> dict[str, Any]:
    cfg, ckpt = _resolve(args)
    torch.manual_seed(cfg["seed"])
    device = resolve_device(args.device)
    train_loader, test_loader = _loaders(cfg, args.limit)
    num_classes = len(DATASETS[cfg["dataset"]]["classes"])
    model = build_detector(cfg["model"], cfg["size"], None if ckpt else cfg.get("init"), num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])
    total = cfg["epochs"] * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    start, best = 0, -1.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start, best = ckpt["epoch"], ckpt.get("best_map", -1.0)
        train_loader.generator.set_state(ckpt["generator"])
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    log = out / "metrics.jsonl"
    if log.exists():  # a resume from an earlier epoch than the log reaches: forget the later lines
        kept = [line for line in log.read_text().splitlines() if line.strip() and json.loads(line)["epoch"] <= start]
        log.write_text("".join(line + "\n" for line in kept))
    use_07 = cfg["test_year"] == "2007"
    print(f"biasloss detect: SSD {cfg['size']} on {cfg['model']}, VOC{cfg['year']} {cfg['train_set']} "
          f"({len(train_loader.dataset)} images) -> VOC{cfg['test_year']} {cfg['test_set']}, {cfg['epochs']} epochs, "
          f"batch {cfg['batch_size']}, device {device}, out {out}", flush=True)
    metrics: dict[str, Any] = {}
    for epoch in range(start, cfg["epochs"]):
        model.train()
        t0, loss_sum, steps = time.perf_counter(), 0.0, 0
        for images, targets in train_loader:
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items() if k != "difficult"} for t in targets]
            loss = sum(model(images, targets).values())
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch + 1}, step {steps + 1}; "
                                         f"last good checkpoint: {out / 'last.pt'}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum, steps = loss_sum + loss.item(), steps + 1
        m_ap = evaluate_map(model, test_loader, device, use_07, num_classes)
        metrics = {"epoch": epoch + 1, "train_loss": round(loss_sum / max(steps, 1), 6), "map": round(m_ap, 4),
                   "lr": optimizer.param_groups[0]["lr"], "time_s": round(time.perf_counter() - t0, 3)}
        with open(log, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        best = max(best, m_ap)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "epoch": epoch + 1, "loss": {}, "best_map": best, "generator": train_loader.generator.get_state(),
                 "args": {k: v for k, v in cfg.items() if k not in ("resume", "out")}, "metrics": metrics}
        save_checkpoint(state, out / "last.pt")
        if m_ap >= best:
            save_checkpoint(state, out / "best.pt")
        print(f"epoch {epoch + 1}/{cfg['epochs']}  train loss {metrics['train_loss']:.4f}  mAP {m_ap:.2f}  "
              f"{metrics['time_s']:.1f}s", flush=True)
    return metrics


def detector_from_checkpoint(path: str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The SSD a ``biasloss detect train`` checkpoint holds, in eval mode on ``device``, and the
    run's settings (``dataset``, ``model``, ``size``, ``data_dir``, the splits, ...)."""
    ckpt = load_checkpoint(path)
    if "best_map" not in ckpt:
        raise CheckpointError(f"{path} is not a 'biasloss detect train' checkpoint (a classifier's? "
                              "evaluate those with 'biasloss eval')")
    cfg = dict(_DEFAULTS) | ckpt["args"] | {"epoch": ckpt["epoch"]}
    model = build_detector(cfg["model"], cfg["size"], num_classes=len(DATASETS[cfg["dataset"]]["classes"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit SSD on {cfg['model']}: "
                              f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval(), cfg


def run_detect_eval(args: Any) -> dict[str, Any]:
    device = resolve_device(args.device)
    model, cfg = detector_from_checkpoint(args.checkpoint, device)
    if args.data_dir:
        cfg["data_dir"] = args.data_dir
    cfg["workers"] = args.workers or cfg["workers"]
    _, test_loader = _loaders(cfg | {"batch_size": 2}, args.limit)
    num_classes = len(DATASETS[cfg["dataset"]]["classes"])
    m_ap = evaluate_map(model, test_loader, device, cfg["test_year"] == "2007", num_classes)
    return {"map": round(m_ap, 4), "images": len(test_loader.dataset), "epoch": cfg["epoch"], "model": cfg["model"]}


def register(subparsers) -> None:
    """``biasloss detect train|eval|make-scenes``."""
    p = subparsers.add_parser("detect", help="SSD with a SkipblockNet backbone on PASCAL VOC (Table 6)")
    sub = p.add_subparsers(dest="detect_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train SSD on VOC; mAP on the test split every epoch")
    t.add_argument("--data-dir", help="the folder holding VOCdevkit/ (torchvision's VOCDetection layout)")
    t.add_argument("--dataset", choices=tuple(DATASETS),
                   help="voc (default: train VOC2012 trainval, test VOC2007 test) or scenes (the output of "
                        "'detect make-scenes': its train and test splits, 10 garment classes)")
    t.add_argument("--model", help="skipblocknet_xs/s/m/l (default skipblocknet_s, as in Table 6)")
    t.add_argument("--init", help="ImageNet weights for the backbone (a biasloss checkpoint or state dict)")
    t.add_argument("--year", help="training year (default: the data set's, VOC 2012)")
    t.add_argument("--train-set", help="default trainval")
    t.add_argument("--test-year", help="default 2007 (11-point AP); other years use the exact area")
    t.add_argument("--test-set", help="default test")
    for name, typ in (("epochs", int), ("batch-size", int), ("lr", float), ("weight-decay", float), ("size", int),
                      ("seed", int), ("workers", int), ("limit", int)):
        t.add_argument(f"--{name}", type=typ)
    t.add_argument("--out", help="run directory (default runs/voc-ssd-<model>-s<seed>)")
    t.add_argument("--resume", metavar="CKPT", help="continue a run from its last.pt")
    t.add_argument("--device")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="mAP of a detect checkpoint on its test split")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data-dir")
    e.add_argument("--workers", type=int)
    e.add_argument("--limit", type=int)
    e.add_argument("--device")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_eval)
    m = sub.add_parser("make-scenes", help="write the Fashion-MNIST scenes detection dataset in VOC's layout",
                       description="Fashion-MNIST garments, tinted and scaled, on cluttered backgrounds: a "
                                   "deterministic stand-in for PASCAL VOC, read by VOCBoxes(..., classes="
                                   "SCENE_CLASSES). Defaults: 4000 train and 1000 test scenes of 128 px, seed 0.")
    m.add_argument("--out", required=True, help="a new or empty directory (it will hold VOCdevkit/VOC2007)")
    m.add_argument("--train", type=int, help="train scenes (default 4000), garments from Fashion-MNIST's train split")
    m.add_argument("--test", type=int, help="test scenes (default 1000), garments from its test split")
    m.add_argument("--size", type=int, help="image side in pixels, 48..512 (default 128)")
    m.add_argument("--seed", type=int, help="default 0")
    m.add_argument("--data-dir", help="where Fashion-MNIST is looked for (default: standard places)")
    m.set_defaults(func=_make_scenes)


def _train(args) -> int:
    run_detect_train(args)
    return 0


def _eval(args) -> int:
    result = run_detect_eval(args)
    print(json.dumps(result) if args.json else f"{result['model']} SSD: mAP {result['map']:.2f} on "
          f"{result['images']} test images (epoch {result['epoch']})")
    return 0


def _make_scenes(args) -> int:
    given = {k: getattr(args, k) for k in ("train", "test", "size", "seed") if getattr(args, k) is not None}
    existed = (Path(args.out) / "scenes.json").is_file()
    out = make_scenes(args.out, data_dir=args.data_dir, **given)
    info = json.loads((out / "scenes.json").read_text())
    p, objects = info["params"], info["objects"]
    print(f"{'already there, the same dataset' if existed else 'wrote'}: {p['train']} train scenes "
          f"({objects['train']} objects) and {p['test']} test scenes ({objects['test']} objects), "
          f"{p['size']}x{p['size']} px, seed {p['seed']}, in {out} (VOCdevkit/VOC2007)")
    return 0
