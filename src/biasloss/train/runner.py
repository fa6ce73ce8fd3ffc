"""``biasloss train`` and ``biasloss eval``: the training run around the engine.

In the manner of torchvision's reference scripts: a run is described by a :class:`TrainConfig`
(the command's options), builds data, model, loss, optimizer, schedule and EMA from it, trains
epoch by epoch, evaluates on the test split, appends one JSON line per epoch to ``metrics.jsonl``
and writes ``last.pt`` and ``best.pt`` atomically. Everything random is a function of
``(seed, epoch, step)``, so ``--resume`` continues exactly, even from a checkpoint written by
Ctrl-C or SIGTERM in the middle of an epoch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import biasloss
from biasloss._checks import positive, positive_flags
from biasloss.data import build_loaders, get_dataset_spec
from biasloss.features import FeatureTap
from biasloss.losses import LOSSES, BiasLoss, clamp_option, create_loss, needs_features
from biasloss.models import create_model, evaluated_weights, list_models, load_pretrained
from biasloss.models.utils import BATCHNORMS
from biasloss.train.checkpoint import CheckpointError, load_checkpoint, training_args
from biasloss.train.distributed import DistInfo, cleanup_distributed, gather_columns, init_distributed
from biasloss.train.ema import ModelEma
from biasloss.train.engine import ClassifierObjective, ModelWithFeatures, evaluate
from biasloss.train.loop import Run, autocast_dtype, next_free_dir, open_run_dir, train_task
from biasloss.train.recipes import Recipe, build_optimizer, build_scheduler, default_recipe, get_recipe

__all__ = ["DEFAULTS", "IDENTITY_ARGS", "TrainConfig", "build_model", "model_from_checkpoint", "resume_conflict",
           "run_eval", "run_train", "trained_with"]


@dataclasses.dataclass
class TrainConfig:
    """What ``biasloss train`` trains: one field per option of the command (``--batch-size`` is
    ``batch_size``). ``None`` is "not given": resuming, the checkpoint's value; otherwise the
    recipe's (``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``label_smoothing``,
    ``model``) or :data:`DEFAULTS`. ``clamp`` is ``[low, high]``, or ``"none"`` for no clamp."""

    dataset: str | None = None
    data_dir: str | None = None
    download: bool = False
    model: str | None = None
    loss: str | None = None
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    alpha: float | None = None
    beta: float | None = None
    scaling: str | None = None
    clamp: list[float] | str | None = None
    gamma: float | None = None
    loss_scale: float | None = None
    no_loss_sync: bool = False
    seed: int | None = None
    out: str | None = None
    init: str | None = None
    resume: str | None = None
    stop_after: int | None = None
    limit: int | None = None
    device: str | None = None
    workers: int | None = None
    progress: bool | None = None
    amp: str | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    compile_mode: str | None = None


#: What an option left unset trains with (the model is the recipe's); every loss's own options
#: (:data:`biasloss.losses.LOSSES`) are set, whichever loss a run trains.
DEFAULTS: dict[str, Any] = {
    "dataset": "fashion-mnist", "loss": "bias", "seed": 0,
    **{key: value for spec in LOSSES.values() for key, value in spec.options.items()},
    "loss_scale": 1.0, "amp": "auto", "channels_last": True, "compile": False,
}
#: Options whose default is the recipe's; the recipe a checkpoint saves holds their values.
RECIPE_ARGS = ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "model")
#: Arguments that define what is trained; a resume must not change them.
IDENTITY_ARGS = ("dataset", "model", "loss", "recipe", "seed", "alpha", "beta", "scaling", "clamp", "gamma",
                 "loss_scale", "limit", "batch_size", "lr", "weight_decay", "label_smoothing")


def _log(info: DistInfo, message: str) -> None:
    if info.is_main:
        print(message, flush=True)


def trained_with(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """What a training checkpoint trained: the value of each of :data:`IDENTITY_ARGS` and of
    ``epochs`` (the schedule it was planned with) it ran with. An option left to the recipe has
    the recipe's value, one the checkpoint predates its :data:`DEFAULTS` value; ``None`` where
    neither says (``limit``: all the data)."""
    args, recipe = ckpt.get("args") or {}, ckpt.get("recipe") or {}
    have: dict[str, Any] = {}
    for key in (*IDENTITY_ARGS, "epochs"):
        value = args.get(key)
        if value is None and key in RECIPE_ARGS:
            value = recipe.get(key)
        if value is None:
            value = DEFAULTS.get(key)
        have[key] = list(value) if isinstance(value, tuple) else value
    return have


def resume_conflict(have: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """The first setting of ``wanted`` that ``have`` (:func:`trained_with`) differs in, as
    ``"--lr 0.1, not 0.2"`` (the value trained with first); ``None`` when they agree."""
    for key, given in wanted.items():
        value = have.get(key)
        if value != given:
            return f"--{key.replace('_', '-')} {value}, not {given}"
    return None


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
        saved_compiled = bool(ckpt["args"].get("compile") or ckpt["args"].get("compile_mode"))
        if _compiled(config) and not saved_compiled:  # the epoch's batches would change (drop_last)
            raise CheckpointError("cannot resume with --compile a run trained without it: a compiled run drops "
                                  "the last short batch of each epoch; resume without --compile")
        for field in dataclasses.fields(TrainConfig):
            saved = ckpt["args"].get(field.name)
            if getattr(config, field.name) is None and field.name not in ("resume", "out", "stop_after"):
                setattr(config, field.name, copy.deepcopy(saved))
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
            else (ValueError, "--loss")
        raise error(f"{where} loss {config.loss!r}, which this biasloss does not know; known: {', '.join(LOSSES)}")
    positive_flags(vars(config), ("epochs", "batch_size", "workers", "stop_after", "limit"))
    positive("--lr", config.lr, kind=float)
    positive("--loss-scale", config.loss_scale, kind=float)
    if config.weight_decay is not None and not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise ValueError(f"--weight-decay must be a number >= 0, got {config.weight_decay}")
    return config


def _recipe(config: TrainConfig) -> Recipe:
    return get_recipe(config.recipe).override(**{key: getattr(config, key) for key in RECIPE_ARGS})


def build_model(args, spec, recipe: Recipe | None = None) -> nn.Module:
    """``args.model`` for data set ``spec`` (classes, channels, the stride-8 stem where it has one)."""
    # Only our SkipblockNets have a stride-8 layout; the CIFAR zoo is built for 32 px already.
    small_input = spec.small_input and args.model in list_models()
    model = create_model(args.model, num_classes=spec.num_classes, in_chans=spec.in_chans,
                         small_input=small_input)
    if recipe is not None and recipe.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, BATCHNORMS):
                m.momentum = recipe.bn_momentum
    return model


def _compiled(config: TrainConfig) -> bool:
    """Whether the run compiles its training step (``--compile``, or a ``--compile-mode``)."""
    return bool(config.compile or config.compile_mode)


def _build_loss(config: TrainConfig, recipe: Recipe, info: DistInfo) -> nn.Module:
    """``config.loss`` with its own options (:data:`~biasloss.losses.LOSSES`) and the recipe's label smoothing."""
    options = {key: getattr(config, key) for key in LOSSES[config.loss].options}
    if "clamp" in options:
        options["clamp"] = clamp_option(options["clamp"])
    if config.loss == "bias":  # min-max scaling over the global batch under torchrun
        options["sync"] = info.enabled and not config.no_loss_sync
    criterion = create_loss(config.loss, label_smoothing=recipe.label_smoothing, **options)
    if isinstance(criterion, BiasLoss):
        criterion.record_weights = True  # logged per epoch (weight_stats)
    return criterion


def _features_net(model: nn.Module, criterion: nn.Module, spec, tap_layer: str | None = None) -> ModelWithFeatures:
    want = needs_features(criterion)
    tap = None
    if want and not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        tap = FeatureTap(model, layer=tap_layer, input_size=(spec.in_chans, spec.image_size, spec.image_size))
    return ModelWithFeatures(model, tap, with_features=want)


def _jsonable(config: TrainConfig) -> dict[str, Any]:
    return {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in dataclasses.asdict(config).items()}


def _default_out(config: TrainConfig) -> Path:
    """``runs/<dataset>-<model>-<loss>-s<seed>``, numbered past directories holding a run."""
    return next_free_dir(Path("runs") / f"{config.dataset}-{config.model}-{config.loss}-s{config.seed}")


def run_train(config: TrainConfig) -> dict[str, Any]:
    """Train as ``config`` says; returns the last epoch's metrics."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"run_train takes a TrainConfig, got {type(config).__name__}")
    ckpt = load_checkpoint(config.resume) if config.resume else None
    if ckpt is not None:
        training_args(ckpt, config.resume)  # a checkpoint that does not say what it trained is not resumed
    config = _resolve(config, ckpt)
    return train_task(lambda info, device, cleanup: _build_run(config, info, device, ckpt, cleanup),
                      device=config.device, ckpt=ckpt, resume_from=config.resume, stop_after=config.stop_after)


def _build_run(config: TrainConfig, info: DistInfo, device: torch.device, ckpt: dict[str, Any] | None,
               cleanup: contextlib.ExitStack) -> Run:
    """The classification run a resolved ``config`` describes: data, model, loss, optimizer, schedule, EMA."""
    spec = get_dataset_spec(config.dataset)
    recipe = _recipe(config)
    out = Path(config.out) if config.out else _default_out(config)
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
    criterion = _build_loss(config, recipe, info).to(device)
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
        return {"val_loss": round(val.loss, 6), "val_top1": round(val.top1, 4), "val_top5": round(val.top5, 4),
                "val_class_top1": [round(x, 4) for x in val.class_top1]}

    def train_stats() -> dict[str, Any]:
        """The Bias Loss weights of the epoch's training batches, every rank's (:func:`weight_stats`)."""
        stats = criterion.pop_weight_stats(gather=gather_columns) if isinstance(criterion, BiasLoss) else None
        return stats or {}

    return Run(
        out=out, info=info, device=device, model=model, train_net=train_net,
        objective=ClassifierObjective(criterion, config.loss_scale), criterion=criterion, train_stats=train_stats,
        optimizer=optimizer, scheduler=scheduler,
        train_loader=train_loader, validate=validate,
        describe=lambda m: f"val loss {m['val_loss']:.4f} top1 {m['val_top1']:.2f} top5 {m['val_top5']:.2f}",
        score="val_top1", epochs=recipe.epochs, seed=config.seed, amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None, ema=ema,
        progress=config.progress,
        extra={"args": _jsonable(config),
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
                "dataset": dataset, "trained_on": saved.dataset, "model": saved.model, "epoch": ckpt["epoch"],
                "weights": ckpt.get("eval_weights", "model")}
    finally:
        cleanup_distributed()


def model_from_checkpoint(ckpt: dict[str, Any], spec, path: str | os.PathLike = "checkpoint") -> tuple[nn.Module, str]:
    """The model a training checkpoint describes, holding the weights ``train`` evaluated
    (the EMA's when there is one); returns ``(model, "ema" | "model")``."""
    saved = training_args(ckpt, path)
    model = build_model(saved, spec)
    weights, which = evaluated_weights(ckpt)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {saved.model}: {str(e).splitlines()[0]}") from None
    return model, which
