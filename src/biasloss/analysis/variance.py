"""``biasloss variance``: per-sample feature variance inside a network (Table 5, section 5.5).

Paper: "Bias Loss for Mobile Neural Networks", Abrahamyan et al., ICCV 2021, section 5.5 and
Table 5: the average, maximum and minimum over a dataset of the per-sample variance of the outputs
of the 5th, 20th and last convolutional layers, for models trained with cross-entropy and with the
Bias Loss (the Bias Loss keeps more variance, i.e. more diverse features).

What is measured, precisely:

- conv layers: the ``nn.Conv2d`` modules (subclasses included) in the order they *execute* in one
  forward pass, found with forward hooks on a probe pass over one sample; a module that runs more
  than once counts once, at its first execution, and only that first call is measured in every
  later pass. Layer ``k`` is the k-th of them (1-based), ``last`` the last one to run. Pointwise
  1 x 1 convolutions, depthwise convolutions and the 1 x 1 convolutions some models use for
  squeeze-excite (ours, torchvision's MobileNetV3, timm's) all count, so the "20th layer" of two
  implementations of one architecture can differ; the table names every module measured.
  Any other module can be chosen by its dotted name (``--layers stages.3 conv_head``).
- per-sample variance: unbiased variance (``n - 1``) of one sample's flattened output map, with
  :func:`biasloss.feature_variance`, in eval mode (batch norm running statistics, no dropout),
  without gradients, over the whole split; avg / max / min are running values (no map is kept;
  only the per-sample variances of one layer are kept, for the histogram).
- the Bias Loss weights of the histogram (second panel): ``bias_weights`` semantics (batch min-max
  scaling, ``z = exp(alpha * v) - beta`` clamped as the run was, ``[0.5, 1.5]`` by default) computed, as training does,
  on the feature map the loss reads (``forward_features``, or a :class:`biasloss.FeatureTap` for
  models without it; for the biasloss models that is the head conv's output after batch norm and
  activation, not the raw conv output of the first panel) and scaled *per evaluation batch*. A
  weight depends on the other samples of its batch: the evaluation batches are the test split in
  its stored order (or the training split in the epoch-0 shuffled order, unaugmented) at the
  checkpoint's training batch size unless ``--batch-size`` says otherwise; the training batches
  were shuffled and augmented, so this is the distribution training sees, not the very weights
  it used. ``alpha``, ``beta`` and the clamp come from the checkpoint when it was trained with the Bias Loss;
  a run trained with ``--scaling running_min`` used the authors' running minimum instead of the
  batch minimum, which this does not replay.

The paper's rows are printed beside ours for reference: their models were trained on ImageNet or
CIFAR-100 with the full recipes, so absolute values are comparable only in trend (and their layer
counting may differ from ours, see above).
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from biasloss._checks import positive_flags
from biasloss.errors import InputError, InputTypeError
from biasloss.features import FeatureTap, forward_with_features
from biasloss.losses.bias import DEFAULT_CLAMP, bias_weights, check_clamp, feature_variance, weight_function
from biasloss.models.utils import eval_mode, model_device
from biasloss.paper import PAPER_TABLE5
from biasloss.train.distributed import resolve_device

__all__ = [
    "DEFAULT_LAYERS",
    "PAPER_TABLE5",
    "LayerStats",
    "VarianceResult",
    "checkpoint_variance",
    "collect_variance",
    "conv_layers",
    "format_table",
    "layer_variance_stats",
    "plot_histograms",
    "register",
    "resolve_layers",
]

#: The paper's choice: the 5th, 20th and last convolutional layers.
DEFAULT_LAYERS: tuple[int | str, ...] = (5, 20, "last")


def _images(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, Mapping) and isinstance(batch.get("image"), Tensor):
        return batch["image"]
    raise InputTypeError(f"loader items must be image tensors or (images, labels) pairs, got {type(batch).__name__}")


def conv_layers(model: nn.Module, example: Tensor) -> list[str]:
    """Names of the ``nn.Conv2d`` modules of ``model`` in the order they first execute.

    ``example``: an input batch (only its first sample is used), on the model's device. One
    forward pass in eval mode without gradients; the model is left as it was.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, Tensor):
        raise InputTypeError(f"example must be a tensor, got {type(example).__name__}")
    order: dict[str, None] = {}  # in the order of first execution

    def record(name: str, module, inputs, output) -> None:
        order.setdefault(name)

    handles = [m.register_forward_hook(partial(record, n)) for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d)]
    try:
        with eval_mode(model), torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return list(order)


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        k = "x".join(str(v) for v in module.kernel_size)
        s = module.stride[0] if module.stride[0] == module.stride[1] else "x".join(map(str, module.stride))
        groups = "" if module.groups == 1 else (" depthwise" if module.groups == module.in_channels
                                                else f" groups {module.groups}")
        return f"{type(module).__name__} {module.in_channels}->{module.out_channels} {k} s{s}{groups}"
    return type(module).__name__


def _parse_token(token: int | str) -> int | str:
    if isinstance(token, bool) or not isinstance(token, (int, str)) or token == "":
        raise InputTypeError(f"layers must be conv indices (int), 'last' or module names, got {token!r}")
    if isinstance(token, int):
        return token
    text = token.strip()
    if text.lstrip("+-").isdigit():
        return int(text)
    return text


def resolve_layers(model: nn.Module, layers: Sequence[int | str], conv_order: Sequence[str]) -> list[LayerStats]:
    """Turn ``layers`` (1-based conv indices, ``"last"``, module names) into modules to measure,
    as :class:`LayerStats` with nothing measured yet.

    ``conv_order``: :func:`conv_layers` of the model. Duplicates (``20`` and ``"last"`` naming
    one module) are measured once. ``ValueError`` for an index out of range or an unknown name.
    """
    if isinstance(layers, (str, int)):
        layers = [layers]
    if not layers:
        raise InputError("layers is empty: give conv indices (5 20), 'last' or module names")
    modules = dict(model.named_modules())
    n = len(conv_order)
    resolved: list[LayerStats] = []
    for raw in layers:
        token = _parse_token(raw)
        if isinstance(token, int):
            if not 1 <= token <= n:
                raise InputError(f"layer index {token} out of range: {type(model).__name__} runs {n} conv "
                                 f"layers (give 1..{n} or 'last')")
            name, index = conv_order[token - 1], token
            label = f"{_ordinal(token)} conv" + (" (last)" if token == n else "")
        elif token == "last":
            if n == 0:
                raise InputError(f"{type(model).__name__} runs no nn.Conv2d layer; name a module instead of 'last'")
            name, index, label = conv_order[-1], n, f"last conv ({_ordinal(n)})"
        else:
            if token not in modules or token == "":
                close = difflib.get_close_matches(token, [k for k in modules if k], n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise InputError(f"unknown layer {token!r}: no module of that name in "
                                 f"{type(model).__name__}{hint}")
            index = conv_order.index(token) + 1 if token in conv_order else None
            name, label = token, token if index is None else f"{token} ({_ordinal(index)} conv)"
        if all(r.name != name for r in resolved):
            resolved.append(LayerStats(name, index, label, _describe(modules[name])))
    return resolved


@dataclass
class LayerStats:
    """Running per-sample variance statistics of one layer's output."""

    name: str  # dotted module name
    conv_index: int | None = None  # 1-based position among the executed conv layers, None for other modules
    label: str = ""  # "5th conv", "last conv (69th)", "stages.3"
    description: str = ""  # "Conv2d 16->64 1x1 s1"
    count: int = 0
    total: float = 0.0
    max: float = -math.inf
    min: float = math.inf

    def update(self, variances: Tensor) -> None:
        v = variances.double()
        self.count += v.numel()
        self.total += float(v.sum())
        self.max = max(self.max, float(v.max()))
        self.min = min(self.min, float(v.min()))

    @property
    def avg(self) -> float:
        return self.total / self.count if self.count else math.nan

    def as_dict(self) -> dict[str, float]:
        return {"avg": self.avg, "max": self.max, "min": self.min}


@dataclass
class VarianceResult:
    """What :func:`collect_variance` measured."""

    layers: list[LayerStats]
    samples: int
    batches: int
    num_convs: int  # conv layers the model runs
    kept_layer: str | None = None  # the layer whose per-sample variances are in ``per_sample``
    per_sample: Tensor = field(default_factory=lambda: torch.empty(0))
    weights: Tensor | None = None  # Bias Loss weights, per evaluation batch (None if not asked)
    feature_shape: tuple[int, ...] | None = None  # (C, H, W) of the map the weights come from

    def stats(self) -> dict[str, dict[str, float]]:
        return {s.name: s.as_dict() for s in self.layers}


def collect_variance(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Sequence[int | str] = DEFAULT_LAYERS,
    *,
    keep: int | str | None = "last",
    weights: bool = False,
    alpha: float = 0.3,
    beta: float = 0.3,
    clamp: Sequence[float] | None = DEFAULT_CLAMP,
) -> VarianceResult:
    """Per-sample output variance of the chosen layers over every batch of ``loader``.

    Args:
        model: any ``nn.Module``; run in eval mode without gradients (its flags are restored).
        loader: an iterable of image batches or ``(images, labels)`` pairs; moved to the model's
            device.
        layers: 1-based conv indices in execution order, ``"last"`` and/or module names.
        keep: which of ``layers`` to keep the per-sample variances of (for a histogram); ``None``
            keeps none. If it is not among ``layers`` the last entry of ``layers`` is kept.
        weights: also compute the Bias Loss weights per batch (min-max scaling within the batch,
            as training does) from the feature map the loss reads (``forward_features``, else a
            :class:`FeatureTap`).
        alpha, beta, clamp: the weight function ``z(v) = exp(alpha v) - beta`` clamped to ``clamp``.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    clamp = check_clamp(clamp)
    device = model_device(model)
    it = iter(loader)
    try:
        first = _images(next(it)).to(device)
    except StopIteration:
        raise InputError("the loader is empty: no samples to measure") from None
    order = conv_layers(model, first)
    stats = resolve_layers(model, layers, order)
    kept: str | None = None
    if keep is not None:
        kept = resolve_layers(model, [keep], order)[0].name
        if kept not in {s.name for s in stats}:
            kept = stats[-1].name
    modules = dict(model.named_modules())
    done: set[str] = set()  # layers already measured in the current forward pass
    kept_values: list[Tensor] = []
    weight_values: list[Tensor] = []
    feature_shape: tuple[int, ...] | None = None

    def measure(s: LayerStats, module, inputs, output) -> None:
        if s.name in done:  # a module run twice per pass: only its first call is measured
            return
        done.add(s.name)
        if not isinstance(output, Tensor) or output.dim() < 2 or math.prod(output.shape[1:]) < 2:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise InputError(f"layer {s.name!r} returns {shape}; need a (B, ...) tensor with at least "
                             f"2 values per sample")
        v = feature_variance(output)
        s.update(v)
        if s.name == kept:
            kept_values.append(v.cpu())

    handles = [modules[s.name].register_forward_hook(partial(measure, s)) for s in stats]
    tap: FeatureTap | None = None
    if weights and not (callable(getattr(model, "forward_features", None))
                        and callable(getattr(model, "forward_head", None))):
        tap = FeatureTap(model, input_size=tuple(first.shape[1:]))
    samples = batches = 0
    try:
        with eval_mode(model), torch.no_grad():
            for x in itertools.chain([first], (_images(batch).to(device) for batch in it)):
                done.clear()
                if weights:
                    _, features = forward_with_features(model, x, tap)
                    weight_values.append(bias_weights(features, alpha=alpha, beta=beta, clamp=clamp).cpu())
                    feature_shape = tuple(features.shape[1:])
                else:
                    model(x)
                missing = [s.name for s in stats if s.name not in done]
                if missing:
                    raise InputError(f"layer {missing[0]!r} did not run in the forward pass")
                samples += x.shape[0]
                batches += 1
    finally:
        for h in handles:
            h.remove()
        if tap is not None:
            tap.remove()
    return VarianceResult(
        layers=stats, samples=samples, batches=batches, num_convs=len(order), kept_layer=kept,
        per_sample=torch.cat(kept_values) if kept_values else torch.empty(0),
        weights=torch.cat(weight_values) if weight_values else None,
        feature_shape=feature_shape,
    )


def layer_variance_stats(
    model: nn.Module, loader: Iterable[Any], layers: Sequence[int | str] = DEFAULT_LAYERS
) -> dict[str, dict[str, float]]:
    """``{module name: {"avg", "max", "min"}}`` of the per-sample output variance over ``loader``;
    ``layers`` (default: the paper's 5th, 20th and last conv) and the rest as in :func:`collect_variance`."""
    return collect_variance(model, loader, layers, keep=None).stats()


def _num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if x == 0 or 1e-3 <= abs(x) < 1e4:
        text = f"{x:.3g}"
        return text if "e" not in text else f"{x:.0f}"
    return f"{x:.2e}"


def _paper_rows() -> list[str]:
    return [f"| paper: {model} ({loss}) | " + " | ".join(" / ".join(map(str, c)) for c in cells[:3]) + " |"
            for model, loss, cells in PAPER_TABLE5]


def format_table(result: VarianceResult, label: str = "ours", *, what: str | None = None) -> str:
    """Markdown: our row (avg / max / min per layer) and the paper's Table 5 rows.

    When the layers are the paper's (5th, 20th, last conv) the paper's rows share our table;
    otherwise they follow in a table of their own. ``what`` describes the data (a sentence).
    """
    layers = result.layers
    paper_columns = [s.conv_index for s in layers] == [5, 20, result.num_convs] and result.num_convs > 20
    header = "| model | " + " | ".join(s.label for s in layers) + " |"
    lines = [header, "|" + "---|" * (len(layers) + 1),
             f"| {label} | " + " | ".join(f"{_num(s.avg)} / {_num(s.max)} / {_num(s.min)}" for s in layers) + " |"]
    if paper_columns:
        lines += _paper_rows()
    lines += ["", "Cells: average / maximum / minimum over samples of the per-sample unbiased variance of the "
              "layer's output map" + (f"; {what}" if what else "") + ".",
              "Layers: " + "; ".join(f"{s.label} = `{s.name}` ({s.description})" for s in layers) + "."]
    if not paper_columns:
        lines += ["", "Paper, Table 5 (5th, 20th, last conv layer):", "",
                  "| model | 5th conv | 20th conv | last conv |", "|---|---|---|---|", *_paper_rows()]
    lines.append("Paper rows: their models (ImageNet / CIFAR-100, full training recipes, their layer counting); "
                 "compare trends (Bias Loss vs cross-entropy, early vs late layers), not values.")
    return "\n".join(lines)


def plot_histograms(
    result: VarianceResult,
    out: str | Path,
    *,
    title: str | None = None,
    alpha: float = 0.3,
    beta: float = 0.3,
    clamp: Sequence[float] | None = DEFAULT_CLAMP,
    batch_size: int | None = None,
    bins: int = 40,
) -> Path:
    """Two panels: the kept layer's per-sample variances; the Bias Loss weights per evaluation batch."""
    from biasloss.analysis._figures import check_out, figure, save, style

    path = check_out(out, "--hist")
    if result.per_sample.numel() == 0:
        raise InputError("no per-sample variances were kept: measure with keep='last'")
    from matplotlib.ticker import MaxNLocator

    fig, axes = figure(1, 2 if result.weights is not None else 1, size=(5.6, 4.2))
    for ax in axes:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    stats = next(s for s in result.layers if s.name == result.kept_layer)
    ax = axes[0]
    ax.hist(result.per_sample.double().numpy(), bins=bins, color="#1f77b4", alpha=0.85)
    ax.axvline(stats.avg, color="#d62728", linewidth=1.2, label=f"avg {_num(stats.avg)}")
    ax.legend(fontsize=9)
    ax.ticklabel_format(axis="x", useOffset=False)
    style(ax, f"per-sample variance of {stats.label}", "samples",
           f"{stats.name}: {result.samples} samples")
    if result.weights is not None:
        ax = axes[1]
        ax.hist(result.weights.double().numpy(), bins=bins, color="#2ca02c", alpha=0.85)
        # the range batch scaling can reach: z(0) for the batch's lowest variance, z(1) for its highest
        ends = weight_function(torch.tensor([0.0, 1.0], dtype=torch.float64), alpha, beta, clamp).tolist()
        for e, name, dx, ha in zip(ends, ("z(0)", "z(1)"), (3, -3), ("left", "right")):
            ax.axvline(e, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(name, (e, 1.0), xycoords=("data", "axes fraction"), xytext=(dx, -12),
                        textcoords="offset points", fontsize=8, color="grey", ha=ha)
        shape = "x".join(map(str, result.feature_shape)) if result.feature_shape else "?"
        per = f"scaled per batch of {batch_size}" if batch_size else "scaled per evaluation batch"
        clamp_text = f", clamp [{clamp[0]:g}, {clamp[1]:g}]" if clamp is not None else ""
        style(ax, f"Bias Loss weight z(v) (α={alpha:g}, β={beta:g}{clamp_text})", "samples",
               f"on the loss's feature map ({shape}), {per}")
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)


def _setup(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Model (eval weights of the checkpoint, or random init), evaluation loader and what they are."""
    from biasloss.data import AugmentConfig, build_loaders, get_dataset_spec
    from biasloss.train.saved_run import load_run
    from biasloss.train.settings import TrainConfig, build_model

    if args.checkpoint:
        run = load_run(args.checkpoint)
        dataset = args.dataset or run.settings.dataset
        run.spec_for(dataset)
        options = run.data_options(dataset)
        data_dir, limit = args.data_dir or options["data_dir"], args.limit or options["limit"]
        batch, seed = args.batch_size or options["batch_size"] or 128, options["seed"]
    else:
        run = None
        dataset = args.dataset or "fashion-mnist"
        get_dataset_spec(dataset)
        data_dir, limit, batch, seed = args.data_dir, args.limit, args.batch_size or 128, args.seed
    train_loader, val_loader, spec = build_loaders(
        dataset, data_dir=data_dir, batch_size=batch, eval_batch_size=batch, device=device,
        augment=AugmentConfig(), seed=seed, workers=args.workers or 4, limit=limit,
    )
    loader = val_loader
    if args.split == "train":
        train_loader.set_epoch(0)
        loader = train_loader
    if run is not None:
        model, settings = run.model().to(memory_format=run.memory_format()), run.settings
        ema = ", EMA" if run.weights == "ema" else ""
        label = f"ours: {settings.model} ({settings.loss}, epoch {run.epoch}{ema})"
        weighting, model_name = run.bias_weighting(), settings.model
    else:
        torch.manual_seed(args.seed)
        model = build_model(TrainConfig(model=args.model), spec).to(memory_format=torch.channels_last)
        label, model_name = f"ours: {args.model} (random init, seed {args.seed})", args.model
        weighting = (0.3, 0.3, DEFAULT_CLAMP)  # the paper's
    return {"model": model.to(device), "loader": loader, "dataset": dataset, "label": label, "batch": batch,
            "weighting": dict(zip(("alpha", "beta", "clamp"), weighting)), "model_name": model_name}


def checkpoint_variance(
    checkpoint: str | Path,
    layers: Sequence[int | str] = DEFAULT_LAYERS,
    *,
    split: str = "test",
    device: str | None = None,
    data_dir: str | None = None,
) -> VarianceResult:
    """What ``biasloss variance --checkpoint CKPT`` measures: the per-sample variance statistics
    of ``layers`` for the checkpoint's evaluation weights, on its own dataset's ``split`` at its
    training batch size and ``--limit`` (Table 5, section 5.5)."""
    if split not in ("test", "train"):
        raise InputError(f"split must be 'test' or 'train', got {split!r}")
    args = argparse.Namespace(checkpoint=str(checkpoint), model=None, dataset=None, data_dir=data_dir,
                              limit=None, batch_size=None, split=split, seed=0, workers=None)
    setup = _setup(args, resolve_device(device))
    return collect_variance(setup["model"], setup["loader"], layers, keep=None)


def _run(args: argparse.Namespace) -> int:
    if args.checkpoint and args.model:
        raise InputError("give --checkpoint or --model, not both")
    if not args.checkpoint and not args.model:
        raise InputError("give --checkpoint CKPT (or --model NAME for a randomly initialised model)")
    positive_flags(vars(args), ("limit", "batch_size", "workers"))
    if args.hist:
        from biasloss.analysis._figures import check_out

        check_out(args.hist, "--hist")
    layers = args.layers or list(DEFAULT_LAYERS)
    setup = _setup(args, resolve_device(args.device))
    result = collect_variance(setup["model"], setup["loader"], layers, keep="last" if args.hist else None,
                              weights=bool(args.hist), **setup["weighting"])
    if args.json:
        print(json.dumps(result.stats()))
    else:
        what = (f"{result.samples} images of the {setup['dataset']} {args.split} split, eval mode, "
                f"{result.num_convs} conv layers in forward order")
        print(format_table(result, setup["label"], what=what))
    if args.hist:
        path = plot_histograms(result, args.hist, title=f"{setup['model_name']} on {setup['dataset']} "
                               f"({args.split}, {result.samples} images)",
                               **setup["weighting"], batch_size=setup["batch"])
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def register(subparsers) -> None:
    """Add ``biasloss variance`` to the CLI."""
    from biasloss.train.settings import add_options

    p = subparsers.add_parser(
        "variance",
        description="Average, maximum and minimum over a dataset split of the per-sample variance of the "
                    "outputs of chosen layers (default: the 5th, 20th and last nn.Conv2d in forward "
                    "order), beside the paper's Table 5; optionally histograms of the last layer's "
                    "variances and of the Bias Loss weights per evaluation batch.",
    )
    p.add_argument("--checkpoint", help="a last.pt or best.pt written by train (its eval weights: EMA if any)")
    p.add_argument("--model", help="no checkpoint: a randomly initialised model of this name (quick looks)")
    p.add_argument("--dataset", help="default: the checkpoint's (fashion-mnist with --model)")
    p.add_argument("--data-dir")
    p.add_argument("--layers", nargs="+", metavar="LAYER",
                   help="1-based conv indices in forward order, 'last', or module names (default: 5 20 last)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="test (default) or train (unaugmented, epoch-0 order)")
    p.add_argument("--limit", type=int, help="only the first N images (default: the checkpoint's --limit)")
    p.add_argument("--batch-size", type=int,
                   help="evaluation batch (default: the checkpoint's training batch; the Bias Loss weights "
                        "are scaled per batch)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed with --model (default 0)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object: layer name -> {"avg", "max", "min"}')
    p.add_argument("--hist", metavar="FILE.png",
                   help="write histograms of the last layer's variances and of the Bias Loss weights")
    add_options(p, ("device", "workers"), grouped=False)
    p.set_defaults(func=_run)
