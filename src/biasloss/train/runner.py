"""``biasloss train`` and ``biasloss eval``: the training run around the engine.

In the manner of torchvision's reference scripts: a run is described by its arguments, builds
data, model, loss, optimizer, schedule and EMA from them, trains epoch by epoch, evaluates on the
test split, appends one JSON line per epoch to ``metrics.jsonl`` and writes ``last.pt`` and
``best.pt`` atomically. Everything random is a function of ``(seed, epoch, step)``, so ``--resume``
continues exactly, even from a checkpoint written by Ctrl-C or SIGTERM in the middle of an epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import biasloss
from biasloss.data import build_loaders, get_dataset_spec
from biasloss.features import FeatureTap
from biasloss.losses import clamp_option, create_loss, needs_features
from biasloss.models import create_model, list_models, load_pretrained
from biasloss.train.checkpoint import CheckpointError, load_checkpoint, training_args
from biasloss.train.distributed import DistInfo, cleanup_distributed, init_distributed
from biasloss.train.engine import ClassifierObjective, ModelWithFeatures, evaluate
from biasloss.train.loop import Run, autocast_dtype, next_free_dir, open_run_dir, train_task
from biasloss.train.recipes import Recipe, build_optimizer, build_scheduler, default_recipe, get_recipe

__all__ = ["build_model", "model_from_checkpoint", "run_eval", "run_train"]

#: Arguments that define what is trained; a resume must not change them.
IDENTITY_ARGS = ("dataset", "model", "loss", "recipe", "seed", "alpha", "beta", "scaling", "clamp", "gamma",
                 "limit", "batch_size", "lr", "weight_decay", "label_smoothing")


def _log(info: DistInfo, message: str) -> None:
    if info.is_main:
        print(message, flush=True)


def _resolve(args, ckpt: dict[str, Any] | None) -> None:
    """Fill unset arguments from the checkpoint being resumed (or the defaults), and refuse a
    resume that would change what is trained."""
    if ckpt is not None:
        ckpt_args, ckpt_recipe = ckpt["args"], ckpt.get("recipe") or {}
        for key in IDENTITY_ARGS:
            given, saved = getattr(args, key, None), ckpt_args.get(key)
            if saved is None:  # the recipe's value was used
                saved = ckpt_recipe.get(key)
            if given is not None and saved is not None and given != saved:
                raise CheckpointError(
                    f"cannot resume: the checkpoint was trained with --{key.replace('_', '-')} {saved}, "
                    f"not {given}"
                )
        for key, saved in ckpt_args.items():
            if getattr(args, key, None) is None and key not in ("resume", "out", "stop_after"):
                setattr(args, key, saved)
        if args.out is None:
            args.out = str(Path(args.resume).parent)
    if args.dataset is None:
        args.dataset = "fashion-mnist"
    get_dataset_spec(args.dataset)
    recipe = get_recipe(args.recipe) if args.recipe else default_recipe(args.dataset)
    args.recipe = recipe.name
    # resumed runs keep their precision and memory format unless told otherwise
    defaults = {"loss": "bias", "seed": 0, "alpha": 0.3, "beta": 0.3, "scaling": "batch", "clamp": [0.5, 1.5],
                "gamma": 2.0,
                "model": recipe.model, "amp": "auto", "channels_last": True}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for name in ("epochs", "batch_size", "workers", "stop_after", "limit"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if args.weight_decay is not None and not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise ValueError(f"--weight-decay must be a number >= 0, got {args.weight_decay}")


def _recipe(args) -> Recipe:
    return get_recipe(args.recipe).override(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, model=args.model,
    )


def build_model(args, spec, recipe: Recipe | None = None) -> nn.Module:
    """``args.model`` for data set ``spec`` (classes, channels, the stride-8 stem where it has one)."""
    # Only our SkipblockNets have a stride-8 layout; the CIFAR zoo is built for 32 px already.
    small_input = spec.small_input and args.model in list_models()
    model = create_model(args.model, num_classes=spec.num_classes, in_chans=spec.in_chans,
                         small_input=small_input)
    if recipe is not None and recipe.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = recipe.bn_momentum
    return model


def _build_loss(args, recipe: Recipe, info: DistInfo) -> nn.Module:
    kwargs: dict[str, Any] = {"label_smoothing": recipe.label_smoothing}
    if args.loss == "bias":
        kwargs.update(alpha=args.alpha, beta=args.beta, scaling=args.scaling,
                      clamp=clamp_option(getattr(args, "clamp", None)),
                      sync=info.enabled and not args.no_loss_sync)
    elif args.loss == "focal":
        kwargs.update(gamma=args.gamma)
    return create_loss(args.loss, **kwargs)


def _features_net(model: nn.Module, criterion: nn.Module, spec, tap_layer: str | None = None) -> ModelWithFeatures:
    want = needs_features(criterion)
    tap = None
    if want and not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        tap = FeatureTap(model, layer=tap_layer, input_size=(spec.in_chans, spec.image_size, spec.image_size))
    return ModelWithFeatures(model, tap, with_features=want)


def _jsonable(args) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}


def _default_out(args) -> Path:
    """``runs/<dataset>-<model>-<loss>-s<seed>``, numbered past directories holding a run."""
    return next_free_dir(Path("runs") / f"{args.dataset}-{args.model}-{args.loss}-s{args.seed}")


def run_train(args) -> dict[str, Any]:
    """Train as ``args`` says; returns the last epoch's metrics."""
    ckpt = load_checkpoint(args.resume) if args.resume else None
    if ckpt is not None:
        training_args(ckpt, args.resume)  # a checkpoint that does not say what it trained is not resumed
    _resolve(args, ckpt)
    return train_task(lambda info, device, cleanup: _build_run(args, info, device, ckpt, cleanup),
                      device=args.device, ckpt=ckpt, resume_from=args.resume, stop_after=args.stop_after)


def _build_run(args, info: DistInfo, device: torch.device, ckpt: dict[str, Any] | None,
               cleanup: contextlib.ExitStack) -> Run:
    """The classification run ``args`` describe: data, model, loss, optimizer, schedule, EMA."""
    spec = get_dataset_spec(args.dataset)
    recipe = _recipe(args)
    out = Path(args.out) if args.out else _default_out(args)
    if info.is_main:
        open_run_dir(out, args.resume, cleanup)
    torch.manual_seed(args.seed)
    train_loader, val_loader, spec = build_loaders(
        args.dataset, data_dir=args.data_dir, batch_size=recipe.batch_size,
        eval_batch_size=args.eval_batch_size, device=device, augment=recipe.augment, seed=args.seed,
        workers=args.workers or 4, drop_last=recipe.drop_last, rank=info.rank,
        world_size=info.world_size, limit=args.limit,
        # the default dataset falls back to torchvision's download where there is a network
        download=args.download or args.dataset == "fashion-mnist",
    )
    cleanup.callback(train_loader.close)  # stop DataLoader workers when the run ends, however it ends
    cleanup.callback(val_loader.close)
    model = build_model(args, spec, recipe)
    if getattr(args, "init", None) and ckpt is None:  # a resume takes its weights from the checkpoint
        _log(info, f"initialised with {load_pretrained(model, args.init).summary()}")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    criterion = _build_loss(args, recipe, info).to(device)
    ema = None
    if recipe.ema_decay is not None:  # before any tap: hooks must not be deep-copied into it
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True)
    net = _features_net(model, criterion, spec)
    eval_net = net if ema is None else _features_net(
        ema.module, criterion, spec, net.tap.layer_name if net.tap is not None else None)
    train_net: nn.Module = net
    if info.enabled:
        train_net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        train_net = torch.compile(train_net)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, len(train_loader))
    amp_dtype = autocast_dtype(args.amp, device)
    n_params = sum(p.numel() for p in model.parameters())
    _log(info, f"biasloss {biasloss.__version__}: {args.model} ({n_params / 1e6:.2f}M params) on {args.dataset} "
               f"[{train_loader.num_samples * info.world_size} train images], "
               f"loss {args.loss}, recipe {recipe.name}, {recipe.epochs} epochs, batch {recipe.batch_size}"
               f"{f' x {info.world_size} ranks' if info.enabled else ''}, device {device}, out {out}")

    def validate() -> dict[str, Any]:
        val = evaluate(eval_net, criterion, val_loader, device=device, amp_dtype=amp_dtype, progress=args.progress)
        return {"val_loss": round(val.loss, 6), "val_top1": round(val.top1, 4), "val_top5": round(val.top5, 4)}

    return Run(
        out=out, info=info, device=device, model=model, train_net=train_net,
        objective=ClassifierObjective(criterion), criterion=criterion, optimizer=optimizer, scheduler=scheduler,
        train_loader=train_loader, validate=validate,
        describe=lambda m: f"val loss {m['val_loss']:.4f} top1 {m['val_top1']:.2f} top5 {m['val_top5']:.2f}",
        score="val_top1", epochs=recipe.epochs, seed=args.seed, amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None, ema=ema,
        progress=args.progress,
        extra={"args": _jsonable(args),
               "num_classes": spec.num_classes,  # for folder datasets, the classes found in the data
               "recipe": dataclasses.asdict(recipe)},
    )


def run_eval(args) -> dict[str, Any]:
    """Top-1 / top-5 of a training checkpoint on its dataset's test split."""
    info, device = init_distributed(args.device)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        saved = training_args(ckpt, args.checkpoint)
        dataset = args.dataset or saved.dataset
        spec = get_dataset_spec(dataset)
        saved_spec = get_dataset_spec(saved.dataset)
        if (spec.num_classes, spec.in_chans) != (saved_spec.num_classes, saved_spec.in_chans):
            raise ValueError(f"the checkpoint was trained on {saved.dataset} ({saved_spec.num_classes} classes, "
                             f"{saved_spec.in_chans} channels) and cannot be evaluated on {dataset}")
        _, val_loader, spec = build_loaders(
            dataset, data_dir=args.data_dir or (saved.data_dir if dataset == saved.dataset else None),
            batch_size=saved.batch_size or 128, eval_batch_size=args.batch_size or saved.eval_batch_size,
            device=device, seed=saved.seed, workers=args.workers or 4, rank=info.rank,
            world_size=info.world_size, limit=saved.limit if dataset == saved.dataset else None,
        )
        model, _ = model_from_checkpoint(ckpt, spec, args.checkpoint)
        memory_format = torch.channels_last if saved.channels_last else torch.contiguous_format
        model = model.to(device=device, memory_format=memory_format)
        # the precision train's validation ran in, so that the top-1 is the one it logged
        try:
            result = evaluate(ModelWithFeatures(model, with_features=False), None, val_loader, device=device,
                              amp_dtype=autocast_dtype(saved.amp, device), progress=args.progress)
        finally:
            val_loader.close()
        return {"top1": round(result.top1, 4), "top5": round(result.top5, 4), "samples": result.samples,
                "dataset": dataset, "model": saved.model, "epoch": ckpt["epoch"],
                "weights": ckpt.get("eval_weights", "model")}
    finally:
        cleanup_distributed()


def model_from_checkpoint(ckpt: dict[str, Any], spec, path: str | os.PathLike = "checkpoint") -> tuple[nn.Module, str]:
    """The model a training checkpoint describes, holding the weights ``train`` evaluated
    (the EMA's when there is one); returns ``(model, "ema" | "model")``."""
    saved = training_args(ckpt, path)
    model = build_model(saved, spec)
    weights, which = ckpt["model"], "model"
    if ckpt.get("eval_weights") == "ema" and ckpt.get("ema"):
        weights = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
        which = "ema"
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {saved.model}: {str(e).splitlines()[0]}") from None
    return model, which
