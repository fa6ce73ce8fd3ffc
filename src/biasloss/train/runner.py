"""``biasloss train`` and ``biasloss eval``: the classification run.

In the manner of torchvision's reference scripts: a run is described by a :class:`TrainConfig`
(the command's options), builds data, model, loss, optimizer, schedule and EMA from it and is
trained by :func:`biasloss.train.loop.fit` (epochs, evaluation on the test split, files, resume).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import biasloss
from biasloss._checks import positive, positive_flags
from biasloss.data import build_loaders, get_dataset_spec
from biasloss.errors import InputError, InputFileNotFoundError, InputTypeError
from biasloss.features import FeatureTap
from biasloss.losses import LOSSES, BiasLoss, needs_features
from biasloss.models import load_pretrained
from biasloss.train.checkpoint import CheckpointError, load_checkpoint, training_args
from biasloss.train.distributed import DistInfo, cleanup_distributed, gather_columns, init_distributed
from biasloss.train.ema import ModelEma
from biasloss.train.engine import ClassifierObjective, ModelWithFeatures, evaluate
from biasloss.train.loop import Run, autocast_dtype, next_free_dir, open_run_dir, train_task
from biasloss.train.recipes import Recipe, build_optimizer, build_scheduler, default_recipe, get_recipe
from biasloss.train.saved_run import load_run
from biasloss.train.settings import (DEFAULTS, IDENTITY_ARGS, RECIPE_ARGS, TrainConfig, build_loss, build_model,
                                     resume_conflict, trained_with)

__all__ = ["DEFAULTS", "IDENTITY_ARGS", "TrainConfig", "build_model", "resolve_config", "resume_conflict", "run_eval",
           "run_train", "trained_with"]


def _log(info: DistInfo, message: str) -> None:
    if info.is_main:
        print(message, flush=True)


def _resolve(config: TrainConfig, ckpt: dict[str, Any] | None) -> TrainConfig:
    """``config`` with unset options from the checkpoint being resumed (or the defaults); refuses
    a resume that would change what is trained, and bad values."""
    config = copy.deepcopy(config)
    if ckpt is not None:
        have = trained_with(ckpt)
        given = {key: getattr(config, key) for key in IDENTITY_ARGS}
        conflict = resume_conflict(have, {k: v for k, v in given.items() if v is not None and have[k] is not None})
        if conflict:
            raise CheckpointError(f"cannot resume: the checkpoint was trained with {conflict}")
        # the rule (as for reproduce): a resume continues the run as planned, never another length;
        # its learning-rate schedule is built for the epochs it was started with
        if config.epochs is not None and have["epochs"] is not None and config.epochs != have["epochs"]:
            raise CheckpointError(f"cannot resume: the checkpoint was trained with --epochs {have['epochs']}, not "
                                  f"{config.epochs}; a resume keeps the run's epochs (its learning-rate schedule is "
                                  f"planned for them): drop --epochs, or start a new run with --init")
        saved_compiled = bool(ckpt["args"].get("compile") or ckpt["args"].get("compile_mode"))
        if _compiled(config) and not saved_compiled:  # the epoch's batches would change (drop_last)
            raise CheckpointError("cannot resume with --compile a run trained without it: a compiled run drops "
                                  "the last short batch of each epoch; resume without --compile")
        for field in dataclasses.fields(TrainConfig):
            if getattr(config, field.name) is None and field.name not in ("resume", "out", "stop_after"):
                setattr(config, field.name, copy.deepcopy(ckpt["args"].get(field.name)))
        if config.out is None:
            config.out = str(Path(config.resume).parent)
    if config.dataset is None:
        config.dataset = DEFAULTS["dataset"]
    get_dataset_spec(config.dataset)
    recipe = get_recipe(config.recipe) if config.recipe else default_recipe(config.dataset)
    config.recipe = recipe.name
    # resumed runs keep their precision and memory format unless told otherwise
    for key, value in (DEFAULTS | {"model": recipe.model}).items():
        if getattr(config, key) is None:
            setattr(config, key, copy.deepcopy(value))
    if config.loss not in LOSSES:
        error, where = (CheckpointError, f"the checkpoint {config.resume} was trained with") if ckpt is not None \
            else (InputError, "--loss")
        raise error(f"{where} loss {config.loss!r}, which this biasloss does not know; known: {', '.join(LOSSES)}")
    positive_flags(vars(config), ("epochs", "batch_size", "workers", "stop_after", "limit"))
    positive("--lr", config.lr, kind=float)
    positive("--loss-scale", config.loss_scale, kind=float)
    if config.weight_decay is not None and not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise InputError(f"--weight-decay must be a number >= 0, got {config.weight_decay}")
    return config


def _recipe(config: TrainConfig) -> Recipe:
    return get_recipe(config.recipe).override(**{key: getattr(config, key) for key in RECIPE_ARGS})


def _compiled(config: TrainConfig) -> bool:
    return bool(config.compile or config.compile_mode)


def _features_net(model: nn.Module, criterion: nn.Module, spec, tap_layer: str | None = None) -> ModelWithFeatures:
    want = needs_features(criterion)
    tap = None
    if want and not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        tap = FeatureTap(model, layer=tap_layer, input_size=(spec.in_chans, spec.image_size, spec.image_size))
    return ModelWithFeatures(model, tap, with_features=want)


def _jsonable(config: TrainConfig) -> dict[str, Any]:
    return {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in dataclasses.asdict(config).items()}


def _checked_start(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """``config`` resolved (:func:`_resolve`) and the checkpoint it resumes, once the files it
    names are checked."""
    if not isinstance(config, TrainConfig):
        raise InputTypeError(f"run_train takes a TrainConfig, got {type(config).__name__}")
    if config.init and config.resume:  # --init's weights would be silently ignored
        raise InputError(f"--init {config.init} and --resume {config.resume} cannot be given together: a resume "
                         "continues with the checkpoint's weights (drop --init), a new run starts from --init's "
                         "(drop --resume)")
    if config.init and not config.resume and not Path(config.init).exists():  # before any work
        raise InputFileNotFoundError(f"--init {config.init!r}: no such file", config.init)
    ckpt = load_checkpoint(config.resume) if config.resume else None
    if ckpt is not None:
        training_args(ckpt, config.resume)  # a checkpoint that does not say what it trained is not resumed
    return _resolve(config, ckpt), ckpt


def resolve_config(config: TrainConfig) -> TrainConfig:
    """What :func:`run_train` would train for ``config``: every option the defaults, the recipe or
    the checkpoint resumed fill in, given (``train --print-config``); checks it as a run does."""
    config, _ = _checked_start(config)
    recipe = _recipe(config)
    return dataclasses.replace(config, **{key: getattr(recipe, key) for key in RECIPE_ARGS})


def run_train(config: TrainConfig) -> dict[str, Any]:
    """Train as ``config`` says; returns the last epoch's metrics."""
    config, ckpt = _checked_start(config)
    if ckpt is not None:
        planned = _recipe(config).epochs
        if ckpt["epoch"] >= planned:  # a finished run: nothing to train, no file of it touched
            if os.environ.get("RANK", "0") == "0":
                print(f"already finished: {ckpt['epoch']} of {planned} epochs; nothing to do", flush=True)
            return dict(ckpt.get("metrics") or {})
    return train_task(lambda info, device, cleanup: _build_run(config, info, device, ckpt, cleanup),
                      device=config.device, ckpt=ckpt, resume_from=config.resume, stop_after=config.stop_after)


def _build_run(config: TrainConfig, info: DistInfo, device: torch.device, ckpt: dict[str, Any] | None,
               cleanup: contextlib.ExitStack) -> Run:
    """The classification run a resolved ``config`` describes: data, model, loss, optimizer, schedule, EMA."""
    spec = get_dataset_spec(config.dataset)
    recipe = _recipe(config)
    out = Path(config.out) if config.out else next_free_dir(
        Path("runs") / f"{config.dataset}-{config.model}-{config.loss}-s{config.seed}")
    if info.is_main:
        open_run_dir(out, config.resume, cleanup)
    torch.manual_seed(config.seed)
    train_loader, val_loader, spec = build_loaders(
        config.dataset, data_dir=config.data_dir, batch_size=recipe.batch_size,
        eval_batch_size=config.eval_batch_size, device=device, augment=recipe.augment, seed=config.seed,
        workers=config.workers or 4, rank=info.rank,
        # a compiled step sees one batch shape: a last short batch would compile a second graph
        drop_last=recipe.drop_last or _compiled(config),
        world_size=info.world_size, limit=config.limit,
        # the default dataset falls back to torchvision's download where there is a network
        download=config.download or config.dataset == DEFAULTS["dataset"],
    )
    cleanup.callback(train_loader.close)  # stop DataLoader workers when the run ends, however it ends
    cleanup.callback(val_loader.close)
    model = build_model(config, spec, recipe)
    if config.init and ckpt is None:  # a resume takes its weights from the checkpoint
        _log(info, f"initialised with {load_pretrained(model, config.init).summary()}")
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    criterion = build_loss(config, recipe.label_smoothing, distributed=info.enabled).to(device)
    ema = None
    if recipe.ema_decay is not None:  # before any tap: hooks must not be deep-copied into it
        ema = ModelEma(model, recipe.ema_decay)
    net = _features_net(model, criterion, spec)
    eval_net = net if ema is None else _features_net(
        ema.module, criterion, spec, net.tap.layer_name if net.tap is not None else None)
    train_net: nn.Module = net
    if info.enabled:
        train_net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if _compiled(config):
        train_net = torch.compile(train_net, mode=config.compile_mode)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, len(train_loader))
    amp_dtype = autocast_dtype(config.amp, device)
    n_params = sum(p.numel() for p in model.parameters())
    _log(info, f"biasloss {biasloss.__version__}: {config.model} ({n_params / 1e6:.2f}M params) on {config.dataset} "
               f"[{train_loader.num_samples * info.world_size} train images], "
               f"loss {config.loss}, recipe {recipe.name}, {recipe.epochs} epochs, batch {recipe.batch_size}"
               f"{f' x {info.world_size} ranks' if info.enabled else ''}, device {device}, out {out}")

    def validate() -> dict[str, Any]:
        val = evaluate(eval_net, criterion, val_loader, device=device, amp_dtype=amp_dtype, progress=config.progress,
                       num_classes=spec.num_classes)
        return {"val_loss": round(val.loss, 6), "val_ce": round(val.cross_entropy, 6),
                "val_top1": round(val.top1, 4), "val_top5": round(val.top5, 4),
                "val_class_top1": [round(x, 4) for x in val.class_top1]}

    def train_stats() -> dict[str, Any]:
        """The Bias Loss weights of the epoch's training batches, every rank's (:func:`weight_stats`)."""
        return (criterion.pop_weight_stats(gather=gather_columns) if isinstance(criterion, BiasLoss) else None) or {}

    return Run(
        out=out, info=info, device=device, model=model, train_net=train_net,
        objective=ClassifierObjective(criterion, config.loss_scale), criterion=criterion, train_stats=train_stats,
        optimizer=optimizer, scheduler=scheduler, train_loader=train_loader, validate=validate,
        describe=lambda m: f"val loss {m['val_loss']:.4f} top1 {m['val_top1']:.2f} top5 {m['val_top5']:.2f}",
        score="val_top1", epochs=recipe.epochs, seed=config.seed, amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None, ema=ema,
        progress=config.progress,
        extra={"args": _jsonable(config),
               "num_classes": spec.num_classes,  # for folder datasets, the classes found in the data
               "recipe": dataclasses.asdict(recipe)},
    )


def run_eval(args) -> dict[str, Any]:
    """Top-1 / top-5 of a training checkpoint on its dataset's test split (or ``args.dataset``'s,
    when it has the same classes and channels)."""
    info, device = init_distributed(args.device)
    try:
        run = load_run(args.checkpoint)
        dataset = args.dataset or run.settings.dataset
        run.spec_for(dataset)
        options = run.data_options(dataset)
        _, val_loader, _ = build_loaders(
            dataset, data_dir=args.data_dir or options["data_dir"], batch_size=options["batch_size"],
            eval_batch_size=args.batch_size or run.settings.eval_batch_size, device=device, seed=options["seed"],
            workers=args.workers or 4, rank=info.rank, world_size=info.world_size,
            limit=options["limit"] if args.limit is None else args.limit,  # eval --limit N
        )
        model = run.model().to(device=device, memory_format=run.memory_format())
        # the precision train's validation ran in, so that the top-1 is the one it logged
        try:
            result = evaluate(ModelWithFeatures(model, with_features=False), None, val_loader, device=device,
                              amp_dtype=autocast_dtype(run.settings.amp, device), progress=args.progress)
        finally:
            val_loader.close()
        return {"top1": round(result.top1, 4), "top5": round(result.top5, 4), "samples": result.samples,
                "dataset": dataset, "trained_on": run.settings.dataset, "model": run.settings.model,
                "epoch": run.epoch, "weights": run.weights}
    finally:
        cleanup_distributed()
