"""What a classification run trains, as data: :class:`TrainConfig`, one field per option of
``biasloss train``, each with its flag's help, group and default. The command's flags
(:func:`add_options`, also ``reproduce``'s), the command line of a config (:func:`to_argv`), a run
file (:func:`read_config`, :func:`format_config`) and the defaults of options left unset are all
generated from it (the options that define a run are listed in :data:`IDENTITY_ARGS`); a loss's
options take their help, choices and defaults from :data:`biasloss.losses.LOSSES`."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import json
import math
import os
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from biasloss.data import DATASETS
from biasloss.errors import InputError, InputFileNotFoundError
from biasloss.losses import LOSSES, BiasLoss, clamp_option, create_loss
from biasloss.train.recipes import RECIPES, Recipe

__all__ = ["DEFAULTS", "DEVICE_HELP", "IDENTITY_ARGS", "RECIPE_ARGS", "TrainConfig", "add_options", "build_loss",
           "build_model", "format_config", "read_config", "resume_conflict", "to_argv", "trained_with"]

_RECIPE = object()  # an option whose default is the recipe's
#: ``--device``'s help, the same in every command that has one.
DEVICE_HELP = "cpu, cuda, cuda:1 (default: CUDA where there is one, else the CPU)"


def _option(group: str, help: str = "", *, default: Any = None, flag: bool = True, extra: Mapping[str, Any] = {},
            choices: Callable[[], tuple[str, ...]] | None = None,
            alt: tuple[tuple[str, Mapping[str, Any]], ...] = ()) -> Any:
    """A field of :class:`TrainConfig`, ``None`` until given, with what its flags need: the help
    ``group``, the ``help`` line, the ``default`` of an option left unset (``_RECIPE``: the
    recipe's), ``extra`` arguments of ``add_argument`` for its ``--name`` flag (``flag=False``: it
    has none), its ``choices`` (read from a registry when the flag is made) and ``alt`` flags that
    set it too (``("--no-clamp", {...})``)."""
    return dataclasses.field(default=None, metadata={"group": group, "help": help, "default": default, "flag": flag,
                                                     "extra": extra, "choices": choices, "alt": alt})


@dataclasses.dataclass
class TrainConfig:
    """What ``biasloss train`` trains: one field per option of the command (``--batch-size`` is
    ``batch_size``). ``None`` is "not given": resuming, the checkpoint's value; otherwise the
    recipe's (``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``label_smoothing``,
    ``model``) or :data:`DEFAULTS`. ``clamp`` is ``[low, high]``, or ``"none"`` for no clamp."""

    dataset: str | None = _option("data", "the data set", default="fashion-mnist")
    data_dir: str | None = _option("data", "where the dataset lives (default: standard places per dataset)")
    download: bool | None = _option("data", "let torchvision download the dataset if missing", default=False,
                                    extra={"action": "store_true"})
    model: str | None = _option("model and loss", "skipblocknet_xs/s/m/l, cifar_* zoo, any timm name, or "
                                                  "torchvision.<name>", default=_RECIPE)
    loss: str | None = _option("model and loss", "", default="bias", choices=lambda: tuple(LOSSES))
    recipe: str | None = _option("optimisation")  # help: the recipes by name (_flags)
    epochs: int | None = _option("optimisation", default=_RECIPE)
    batch_size: int | None = _option("optimisation", "per process", default=_RECIPE)
    eval_batch_size: int | None = _option("optimisation", "batch size of the evaluation (default: --batch-size)")
    lr: float | None = _option("optimisation", default=_RECIPE)
    weight_decay: float | None = _option("optimisation", default=_RECIPE)
    label_smoothing: float | None = _option("optimisation", default=_RECIPE)
    # a loss's options: their help, choices and defaults are the loss's (biasloss.losses.LOSSES)
    alpha: float | None = _option("model and loss")
    beta: float | None = _option("model and loss")
    scaling: str | None = _option("model and loss")
    clamp: list[float] | str | None = _option(
        "model and loss", extra={"nargs": 2, "type": float, "metavar": ("LOW", "HIGH")},
        alt=(("--no-clamp", {"action": "store_const", "const": "none",
                             "help": "Bias Loss weights unclamped, as in the authors' code"}),))
    gamma: float | None = _option("model and loss")
    loss_scale: float | None = _option("model and loss", "multiply the training loss by C, any loss (the CE x c "
                                                         "control of docs/results.md)", default=1.0,
                                       extra={"metavar": "C"})
    no_loss_sync: bool | None = _option("model and loss", "under torchrun, scale the Bias Loss per rank instead of "
                                                          "over the global batch", default=False,
                                       extra={"action": "store_true"})
    seed: int | None = _option("run", default=0)
    out: str | None = _option("run", "run directory (default runs/<dataset>-<model>-<loss>-s<seed>, numbered -2, -3, "
                                     "... when that holds a run)")
    init: str | None = _option(
        "run", "fine-tune from these weights: a biasloss checkpoint (its evaluated weights), the authors' "
               "skipblocknet-m.pth, or a state dict of the same architecture; a classifier for another number of "
               "classes starts fresh, the first conv adapts to the channels", extra={"metavar": "WEIGHTS"})
    resume: str | None = _option(
        "run", "continue a run from its last.pt, exactly as planned: the options that define the run, --epochs "
               "included, cannot change (to train longer, start a new run with --init); a finished run is left as "
               "it is (exit 0, nothing to do)", extra={"metavar": "CKPT"})
    stop_after: int | None = _option("run", "stop (with a checkpoint) after epoch N", extra={"metavar": "N"})
    limit: int | None = _option("run", "use only the first N train and test images (smoke tests)",
                                extra={"metavar": "N"})
    device: str | None = _option("runtime", DEVICE_HELP)
    workers: int | None = _option("runtime", "DataLoader workers for folder datasets (default 4)")
    progress: bool | None = _option(
        "runtime", flag=False,
        alt=(("--no-progress", {"action": "store_false",
                                "help": "no progress bars (they are off anyway when stderr is not a terminal)"}),))
    amp: str | None = _option("runtime", "mixed precision (auto: on CUDA bf16 where supported, else fp16 with "
                                         "GradScaler; full precision on the CPU); bf16/fp16 also run on the CPU",
                              default="auto", extra={"choices": ("auto", "off", "bf16", "fp16")})
    channels_last: bool | None = _option(
        "runtime", default=True, flag=False,
        alt=(("--no-channels-last", {"action": "store_false", "help": "keep contiguous memory format "
                                                                     "(channels-last is 1.6-1.8x faster on CPU)"}),))
    compile: bool | None = _option(
        "runtime", "torch.compile the training step's model; the last short batch of each epoch is dropped, so "
                   "that one compilation serves the whole run (evaluation stays eager); a resume keeps the run's "
                   "choice", default=False, extra={"action": "store_true"})
    compile_mode: str | None = _option(
        "runtime", "torch.compile's mode, implies --compile (default: default); reduce-overhead replays CUDA "
                   "graphs, for small models whose steps are launch-bound",
        extra={"choices": ("default", "reduce-overhead", "max-autotune")})


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_LOSS_SPEC_OF = {key: spec for spec in LOSSES.values() for key in spec.options}

#: What an option left unset trains with (the model is the recipe's); every loss's own options
#: (:data:`biasloss.losses.LOSSES`) are set, whichever loss a run trains.
DEFAULTS: dict[str, Any] = {
    name: _LOSS_SPEC_OF[name].options[name] if name in _LOSS_SPEC_OF else f.metadata["default"]
    for name, f in _FIELDS.items()
    if name in _LOSS_SPEC_OF or f.metadata["default"] not in (None, _RECIPE)
}
#: Options whose default is the recipe's; the recipe a checkpoint saves holds their values.
RECIPE_ARGS = tuple(name for name, f in _FIELDS.items() if f.metadata["default"] is _RECIPE)
#: Arguments that define what is trained; a resume must not change them.
IDENTITY_ARGS = ("dataset", "model", "loss", "recipe", "seed", "alpha", "beta", "scaling", "clamp", "gamma",
                 "loss_scale", "limit", "batch_size", "lr", "weight_decay", "label_smoothing")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@functools.cache
def _kind(name: str) -> type:
    """The type of a field's values: int, float, str or bool (``clamp``: list)."""
    hint = typing.get_type_hints(TrainConfig)[name]
    kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return typing.get_origin(kinds[0]) or kinds[0]


def _flags(name: str, help: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """``add_argument``'s arguments for each flag of option ``name`` (``help`` overrides its line)."""
    meta = _FIELDS[name].metadata
    spec = _LOSS_SPEC_OF.get(name)
    text = spec.help[name] if spec else meta["help"]
    if name == "dataset":
        text = ", ".join(f"{d} (default)" if d == DEFAULTS["dataset"] else d for d in DATASETS)
    elif name == "recipe":
        text = f"{', '.join(RECIPES)} (default: the dataset's)"
    elif name in RECIPE_ARGS:
        text = f"{text} (default: the recipe's)" if text else "default: the recipe's"
    elif name in DEFAULTS and _kind(name) is not bool:
        shown = " ".join(map(str, DEFAULTS[name])) if isinstance(DEFAULTS[name], list) else DEFAULTS[name]
        text = f"{text} (default {shown})" if text else f"default: {shown}"
    kwargs: dict[str, Any] = {"help": help.get(name, text)}
    if spec is not None and name in spec.choices:
        kwargs["choices"] = spec.choices[name]
    elif meta["choices"] is not None:
        kwargs["choices"] = meta["choices"]()
    if _kind(name) in (int, float):
        kwargs["type"] = _kind(name)
    kwargs.update(meta["extra"])
    flags = [(_flag(name), kwargs)] if meta["flag"] else []
    return flags + [(flag, dict(alt_kwargs)) for flag, alt_kwargs in meta["alt"]]


def add_options(parser, names: Iterable[str] | None = None, *, help: Mapping[str, str] = {},
                grouped: bool = True) -> None:
    """Add the flags of the options ``names`` (default: all of :class:`TrainConfig`'s) to the
    argparse ``parser``, each storing into its field's name with default ``None`` (not given);
    ``help`` replaces the help line of some; ``grouped``: under the headings of ``--help``."""
    groups: dict[str, Any] = {}
    for name in _FIELDS if names is None else names:
        group = _FIELDS[name].metadata["group"]
        if grouped and group not in groups:
            groups[group] = parser.add_argument_group(group)
        target = groups[group] if grouped else parser
        for flag, kwargs in _flags(name, help):
            target.add_argument(flag, dest=name, default=None, **kwargs)


def to_argv(config: TrainConfig | Mapping[str, Any], names: Iterable[str] | None = None) -> list[str]:
    """The ``biasloss train`` flags that give ``config``'s options ``names`` (default: all, in the
    field order), the options not given (``None``) left out."""
    values = config if isinstance(config, Mapping) else dataclasses.asdict(config)
    return [arg for name in (_FIELDS if names is None else names) if values.get(name) is not None
            for arg in _argv_of(name, values[name])]


def _argv_of(name: str, value: Any) -> list[str]:
    flags = _flags(name, {})
    for flag, kwargs in flags:
        if kwargs.get("action") == "store_const" and value == kwargs["const"]:
            return [flag]
    flag, kwargs = flags[0]
    action = kwargs.get("action")
    if action in ("store_true", "store_false"):
        return [flag] if bool(value) == (action == "store_true") else []
    return [flag, *map(str, value)] if isinstance(value, (list, tuple)) else [flag, str(value)]


def _value(name: str, value: Any, where: str) -> Any:
    """``value`` of option ``name`` read from a run file, checked against the option's type and
    choices (the values its flags accept)."""
    kind = _kind(name)
    if value is None:
        return None
    if name == "clamp" and value == "none":
        return value
    if kind is list:
        ok = isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        expect = "[low, high] or 'none'"
        value = [float(v) for v in value] if ok else value
    elif kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-05 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        expect, value = "a number", float(value) if ok else value
    elif kind is int:
        ok, expect = isinstance(value, int) and not isinstance(value, bool), "an integer"
    else:
        ok, expect = isinstance(value, kind), {bool: "true or false", str: "a string"}[kind]
    choices = _flags(name, {})[0][1].get("choices")
    if ok and choices and value not in choices:
        ok, expect = False, "one of " + ", ".join(choices)
    if not ok:
        raise InputError(f"{where}: {name}: expected {expect}, got {value!r}")
    return value


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The options a run file (YAML or JSON, ``--config``) gives: a mapping of option names
    (``batch_size`` or ``batch-size``) to values as :func:`format_config` writes them, each
    checked; ``null`` is "not given"."""
    import yaml

    path = Path(path)
    where = f"--config {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileNotFoundError(f"{where}: no such file", str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{where}: cannot read it ({e.__class__.__name__}: {e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"{where} is not YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of options to values, got {type(data).__name__}")
    options: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS:
            near = difflib.get_close_matches(name, _FIELDS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(_FIELDS)}"
            raise InputError(f"{where}: unknown option {key!r}{hint}")
        options[name] = _value(name, value, where)
    return options


def format_config(config: TrainConfig) -> str:
    """``config`` as a run file that :func:`read_config` reads back: every option, one a line in
    the order of its fields, its value in JSON (which is YAML too), ``null`` where not given."""
    lines = [f"{name}: {json.dumps(value)}" for name, value in dataclasses.asdict(config).items()]
    return "# biasloss train --config FILE (null: not given; flags on the command line win)\n" + "\n".join(lines) + "\n"


def trained_with(ckpt: Mapping[str, Any], names: Iterable[str] = (*IDENTITY_ARGS, "epochs")) -> dict[str, Any]:
    """What a training checkpoint trained: the value of each option of ``names`` (default: of
    :data:`IDENTITY_ARGS` and of ``epochs``, the schedule it was planned with) it ran with. An
    option left to the recipe has the recipe's value, one the checkpoint predates its
    :data:`DEFAULTS` value; ``None`` where neither says (``limit``: all the data)."""
    args, recipe = ckpt.get("args") or {}, ckpt.get("recipe") or {}
    have: dict[str, Any] = {}
    for key in names:
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
        if have.get(key) != given:
            return f"{_flag(key)} {have.get(key)}, not {given}"
    return None


def build_model(args, spec, recipe: Recipe | None = None) -> nn.Module:
    """``args.model`` for data set ``spec`` (classes, channels, the stride-8 stem where it has one)."""
    from biasloss.models import create_model, list_models  # timm: imported when a model is built, not for --help
    from biasloss.models.utils import BATCHNORMS

    # Only our SkipblockNets have a stride-8 layout; the CIFAR zoo is built for 32 px already.
    small_input = spec.small_input and args.model in list_models()
    model = create_model(args.model, num_classes=spec.num_classes, in_chans=spec.in_chans,
                         small_input=small_input)
    if recipe is not None and recipe.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, BATCHNORMS):
                m.momentum = recipe.bn_momentum
    return model


def build_loss(config: TrainConfig, label_smoothing: float = 0.0, *, distributed: bool = False) -> nn.Module:
    """``config.loss`` with its own options (:data:`~biasloss.losses.LOSSES`, resolved: unset
    ones are the loss's defaults) and ``label_smoothing`` (the recipe's); the Bias Loss scales over
    the global batch when ``distributed`` (unless ``config.no_loss_sync``) and records its weights."""
    spec = LOSSES[config.loss]
    options = {key: spec.options[key] if getattr(config, key) is None else getattr(config, key) for key in spec.options}
    if "clamp" in options:
        options["clamp"] = clamp_option(options["clamp"])
    if spec.cls is BiasLoss:
        options["sync"] = distributed and not config.no_loss_sync
    criterion = create_loss(config.loss, label_smoothing=label_smoothing, **options)
    if isinstance(criterion, BiasLoss):
        criterion.record_weights = True  # logged per epoch (weight_stats)
    return criterion
