"""``biasloss profile``: parameters, MACs, latency and throughput of any model (Tables 1 and 2).

Paper: "Bias Loss for Mobile Neural Networks", Abrahamyan et al., ICCV 2021, Table 1 (MACs and
parameters at 224 px, 1000 classes; the paper writes "FLOPs" for multiply-accumulates) and Table 2
(latency on one phone core at batch 1).

Each figure is what one function gives, as its docstring says: :func:`count_params`, :func:`count_macs`
(PyTorch's own ``FlopCounterMode``: convolutions and matrix multiplies only, so fewer than counters that also
charge for batch norm and pooling, fvcore's and the paper's), :func:`measure_latency` (batch 1, one thread,
interleaved across models) and :func:`measure_throughput` (a larger batch, all threads).

The paper's latencies come from PyTorch 1.6 Mobile on Pixel phones: compare our models with each
other on one machine, not with those milliseconds.

Model names are those of :func:`biasloss.models.create_model`: ``skipblocknet_xs/s/m/l``, the
``cifar_*`` zoo, any timm name, or ``torchvision.<name>``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import math
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import Tensor, nn

from biasloss._checks import is_out_of_memory, positive, try_input
from biasloss._provenance import cpu_name
from biasloss.errors import InputError, InputTypeError
from biasloss.models.utils import eval_mode, model_device
from biasloss.paper import PAPER_MODELS, PAPER_TABLE1, PAPER_TABLE2, PaperFigures

__all__ = [
    "MAC_COUNTER",
    "count_macs",
    "count_params",
    "format_compare_table",
    "measure_latency",
    "measure_throughput",
    "paper_figures",
    "profile_model",
    "profile_models",
    "register",
]

#: What :func:`count_macs` counts, printed beside every MAC figure.
MAC_COUNTER = ("torch.utils.flop_counter: convolutions and linear layers (matrix multiplies) only; "
               "batch norm, pooling, activations and elementwise ops are not counted")


def paper_figures(model_name: str) -> PaperFigures | None:
    """The paper's Table 1 / Table 2 figures for one of our model names, or ``None``."""
    paper_name = PAPER_MODELS.get(model_name)
    if paper_name is None:
        return None
    entry = next((e for e in PAPER_TABLE1 if e.name == paper_name), PaperFigures(paper_name))
    if paper_name in PAPER_TABLE2:
        top1, pixel4, pixel3 = PAPER_TABLE2[paper_name]
        entry = replace(entry, top1=entry.top1 or top1, pixel4_ms=pixel4, pixel3_ms=pixel3)
    return entry


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once; buffers such as BN statistics not)."""
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())


def _input_shape(input_size: int | Sequence[int], in_chans: int = 3) -> tuple[int, ...]:
    dims = (input_size, input_size) if isinstance(input_size, int) and not isinstance(input_size, bool) else input_size
    if not isinstance(dims, Sequence) or not all(isinstance(s, int) and not isinstance(s, bool) for s in dims):
        raise InputTypeError(f"input_size must be an int or a tuple of ints, got {input_size!r}")
    shape = {2: (1, in_chans, *dims), 3: (1, *dims), 4: tuple(dims)}.get(len(dims))
    if shape is None:
        raise InputError(f"input_size must be S, (H, W), (C, H, W) or (B, C, H, W); got {input_size!r}")
    if any(s <= 0 for s in shape):
        raise InputError(f"input sizes must be positive, got {shape}")
    return shape


def _fvcore_mapping() -> dict:
    """Extra ``FlopCounterMode`` formulas for fvcore's convention (see :func:`count_macs`)."""
    aten = torch.ops.aten

    def batch_norm(x_shape, *args, **kwargs) -> int:
        return 2 * 2 * math.prod(x_shape)  # FLOPs = 2 x MACs

    def pooling(x_shape, *args, **kwargs) -> int:
        return 2 * math.prod(x_shape)

    return {aten.mean: pooling, aten.avg_pool2d: pooling, aten._adaptive_avg_pool2d: pooling,
            aten._native_batch_norm_legit_no_training: batch_norm, aten.native_batch_norm: batch_norm}


def count_macs(
    model: nn.Module, input_size: int | Sequence[int] | Tensor, *, in_chans: int = 3, convention: str = "torch"
) -> int:
    """Multiply-accumulates of one forward pass, counted by ``torch.utils.flop_counter``.

    Only convolutions and matrix multiplies are counted (see :data:`MAC_COUNTER`); a convolution
    ``k x k``, ``C_in -> C_out`` (groups ``g``) at output ``H x W`` is ``k*k*C_in/g*C_out*H*W`` MACs,
    a linear layer ``in*out`` per sample; biases are not counted.

    Args:
        model: any module; run in eval mode under ``torch.no_grad`` (its modes are restored).
        input_size: ``S`` (square, ``in_chans`` channels, batch 1), ``(H, W)``, ``(C, H, W)``,
            ``(B, C, H, W)`` or an input tensor. The count is for the whole batch given.
        convention: ``"torch"`` (the counter as is) or ``"fvcore"`` (adds eval-mode BatchNorm at 2
            MACs per element and average pooling at 1 per input element, as fvcore does: 247.8M
            for SkipblockNet-M, against the paper's 246M and 236.6M with ``"torch"``).

    Returns:
        total FLOPs / 2, an int.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if convention not in ("torch", "fvcore"):
        raise InputError(f"convention must be 'torch' or 'fvcore', got {convention!r}")
    mapping = _fvcore_mapping() if convention == "fvcore" else None
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = input_size if isinstance(input_size, Tensor) else torch.zeros(_input_shape(input_size, in_chans),
                                                                      device=model_device(model))
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x)
    return int(counter.get_total_flops()) // 2


def _summary_ms(samples_s: Sequence[float]) -> dict[str, float | int]:
    ms = sorted(s * 1e3 for s in samples_s)
    if len(ms) >= 2:
        q1, median, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = median = q3 = ms[0]
    return {
        "median": median, "mean": statistics.fmean(ms), "min": ms[0], "max": ms[-1],
        "q1": q1, "q3": q3, "iqr": q3 - q1, "reps": len(ms),
    }


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[int]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(positive("threads", threads, kind=int))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an int >= {minimum}, got {value!r}")


def _timed_rounds(
    models: Mapping[str, nn.Module], inputs: Tensor | Mapping[str, Tensor], reps: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per forward, ``reps`` interleaved rounds after ``warmup`` rounds."""
    if not isinstance(models, Mapping) or not models:
        raise InputError("models must be a non-empty dict of name -> nn.Module")
    for name, model in models.items():
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"models[{name!r}] must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(inputs, Tensor):
        per_model = {name: inputs for name in models}
    elif isinstance(inputs, Mapping) and set(inputs) >= set(models):
        per_model = dict(inputs)
    else:
        raise InputTypeError("input must be a tensor or a dict with a tensor for every model")
    _check_count("reps", reps, 1)
    _check_count("warmup", warmup, 0)
    names = list(models)
    syncs = {n: torch.cuda.synchronize if per_model[n].device.type == "cuda" else (lambda: None) for n in names}
    samples: dict[str, list[float]] = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    with eval_mode(*models.values()), torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                models[n](per_model[n])
        gc.collect()
        gc.disable()
        try:
            for r in range(reps):
                k = r % len(names)
                for n in names[k:] + names[:k]:  # rotate: no model always runs first
                    syncs[n]()
                    t0 = time.perf_counter()
                    models[n](per_model[n])
                    syncs[n]()
                    samples[n].append(time.perf_counter() - t0)
        finally:
            if gc_was_enabled:
                gc.enable()
    return samples


def measure_latency(
    models: Mapping[str, nn.Module],
    input: Tensor | Mapping[str, Tensor],
    reps: int = 50,
    warmup: int = 10,
    threads: int | None = 1,
) -> dict[str, dict[str, float | int]]:
    """Forward latency, in milliseconds, of each model on ``input`` (usually batch 1).

    Repetitions are interleaved across models (round ``r`` runs each model once, the order rotated
    by ``r``, so that a change in the machine's load or clock touches every model alike) after
    ``warmup`` rounds, in eval mode under ``torch.inference_mode`` with ``threads`` intra-op threads
    (restored afterwards; ``None`` leaves the setting alone). On CUDA every forward is synchronised.

    Args:
        models: name -> module.
        input: one tensor for all models, or name -> tensor.

    Returns:
        name -> ``{"median", "mean", "min", "max", "q1", "q3", "iqr" (ms), "reps", "threads"}``.
    """
    with _threads(threads) as used:
        samples = _timed_rounds(models, input, reps, warmup)
    return {n: {**_summary_ms(s), "threads": used} for n, s in samples.items()}


def measure_throughput(
    models: Mapping[str, nn.Module],
    input: Tensor | Mapping[str, Tensor],
    reps: int = 5,
    warmup: int = 2,
    threads: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Images per second of each model on a batch (``input``'s first dimension), all threads by
    default. Batches are interleaved across models like :func:`measure_latency`; the figure is
    ``batch / median batch time``.

    Returns:
        name -> ``{"img_per_s", "batch", "threads", "batch_ms": {median, min, max, ...}}``.
    """
    with _threads(threads) as used:
        samples = _timed_rounds(models, input, reps, warmup)
    out = {}
    for name, s in samples.items():
        x = input if isinstance(input, Tensor) else input[name]
        batch_ms = _summary_ms(s)
        out[name] = {"img_per_s": x.shape[0] / (batch_ms["median"] / 1e3), "batch": int(x.shape[0]),
                     "threads": used, "batch_ms": batch_ms}
    return out


def profile_models(
    names: Sequence[str],
    *,
    input_size: int = 224,
    num_classes: int = 1000,
    in_chans: int = 3,
    small_input: bool = False,
    batch: int = 32,
    reps: int = 50,
    warmup: int = 10,
    throughput_reps: int = 5,
    latency: bool = True,
    throughput: bool = True,
    channels_last: bool = True,
    threads: int = 1,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Profile several models on one machine; their timings are interleaved.

    Every model is built with random weights (``num_classes``, ``in_chans``, ``small_input``),
    counted at batch 1 and ``input_size`` x ``input_size``, then timed: latency at batch 1 with
    ``threads`` threads (``reps`` rounds after ``warmup``), throughput at ``batch`` with all threads.
    ``channels_last`` runs the timings in channels-last memory format (1.1-1.8x faster on CPU);
    counts do not depend on it.

    Returns:
        one dict per model: ``model``, ``params``, ``macs``, ``latency_ms`` (median, or ``None``),
        ``latency`` (statistics), ``throughput_img_s``, ``throughput``, ``paper`` (the paper's
        figures or ``None``) and ``setup`` (counter, input shape, threads, device, versions).
    """
    names = list(names)
    if not names:
        raise InputError("give at least one model name")
    for name in names:
        if not isinstance(name, str) or not name:
            raise InputTypeError(f"model names must be non-empty strings, got {name!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"model given more than once: {', '.join(duplicates)}")
    for label, value, minimum in (("input_size", input_size, 1), ("num_classes", num_classes, 1),
                                  ("in_chans", in_chans, 1), ("batch", batch, 1), ("reps", reps, 1),
                                  ("warmup", warmup, 0), ("throughput_reps", throughput_reps, 1),
                                  ("threads", threads, 1)):
        _check_count(label, value, minimum)
    from biasloss.models import create_model
    from biasloss.train.distributed import resolve_device

    dev = resolve_device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    models: dict[str, nn.Module] = {}
    results: dict[str, dict[str, Any]] = {}
    shape = (1, in_chans, input_size, input_size)
    for name in names:
        model = create_model(name, num_classes=num_classes, in_chans=in_chans, small_input=small_input).eval()
        try_input(model, shape, f"--image-size/--input-size {input_size}", 32 if small_input else 224)
        paper = paper_figures(name)
        results[name] = {
            "model": name,
            "params": count_params(model),
            "macs": count_macs(model, shape),
            "macs_fvcore": count_macs(model, shape, convention="fvcore"),
            "latency_ms": None,
            "latency": None,
            "throughput_img_s": None,
            "throughput": None,
            "paper": asdict(paper) if paper is not None else None,
        }
        models[name] = model.to(device=dev, memory_format=memory_format)

    generator = torch.Generator().manual_seed(0)
    if latency:
        x = torch.randn(shape, generator=generator).to(device=dev, memory_format=memory_format)
        for name, stats in measure_latency(models, x, reps=reps, warmup=warmup, threads=threads).items():
            results[name].update(latency=stats, latency_ms=stats["median"])
    if latency and throughput:
        try:
            xb = torch.randn((batch, *shape[1:]), generator=generator).to(device=dev, memory_format=memory_format)
            tp = measure_throughput(models, xb, reps=throughput_reps, warmup=min(warmup, 2) or 1, threads=None)
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            raise InputError(f"--batch {batch} at --input-size {input_size} does not fit in memory; "
                             "give a smaller --batch or --no-throughput") from None
        for name, stats in tp.items():
            results[name].update(throughput=stats, throughput_img_s=stats["img_per_s"])

    setup = {
        "mac_counter": MAC_COUNTER,
        "input_shape": list(shape),
        "num_classes": num_classes,
        "small_input": small_input,
        "memory_format": "channels_last" if channels_last else "contiguous",
        "latency_threads": threads,
        "throughput_threads": torch.get_num_threads(),
        "throughput_batch": batch,
        "device": (f"cpu ({cpu_name()})" if dev.type == "cpu" else
                   f"{dev} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else str(dev)),
        "torch": torch.__version__,
    }
    return [{**results[name], "setup": setup} for name in names]


def profile_model(name: str, **kwargs: Any) -> dict[str, Any]:
    """Profile one model; keyword arguments as :func:`profile_models`."""
    return profile_models([name], **kwargs)[0]


def _count(n: int | None, digits: int = 2) -> str:
    if n is None:
        return "—"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.{digits}f}{unit}"
    return str(n)


def _paper_count(n: int | None, digits: int) -> str:
    return "—" if n is None else f"{n / 1e6:.{digits}f}M"


def _notes(results: Sequence[Mapping[str, Any]]) -> list[str]:
    setup = results[0]["setup"]
    shape = "x".join(str(s) for s in setup["input_shape"])
    notes = [f"MACs: {setup['mac_counter']}; input {shape}, {setup['num_classes']} classes."]
    if any(r.get("paper") for r in results):
        notes[0] += (" The paper's counts include more ops (for SkipblockNet-M: 246M in the paper, 247.8M "
                     "with fvcore, 236.6M with this counter).")
        if setup["input_shape"][2:] != [224, 224] or setup["num_classes"] != 1000 or setup["small_input"]:
            notes.append("The paper's figures are for 224 x 224 inputs and 1000 classes; ours here are not.")
    lat = results[0].get("latency")
    if lat:
        notes.append(f"Latency: {setup['device']}, torch {setup['torch']}, batch 1, {setup['latency_threads']} "
                     f"thread, {setup['memory_format']}, inference_mode; median (min–max, IQR) of {lat['reps']} "
                     f"repetitions interleaved across models. The paper's Table 2 is PyTorch 1.6 Mobile on one core "
                     f"of a Pixel 4 / Pixel 3: compare ratios, not milliseconds.")
    tp = results[0].get("throughput")
    if tp:
        notes.append(f"Throughput: batch {tp['batch']}, {tp['threads']} threads, from the median of "
                     f"{tp['batch_ms']['reps']} batches.")
    return notes


def format_compare_table(results: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of :func:`profile_models` results with the paper's figures beside ours."""
    rows = [
        "| model | params (ours) | params (paper) | MACs (ours) | MACs (paper) | latency ms, median (min–max, IQR) "
        "| throughput img/s | paper: top-1 % | paper: Pixel 4 / Pixel 3 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        paper = r.get("paper") or {}
        name = r["model"] + (f" ({paper['name']})" if paper else "")
        phones = ("—" if paper.get("pixel4_ms") is None
                  else f"{paper['pixel4_ms']:g} / {paper['pixel3_ms']:g}")
        top1 = "—" if paper.get("top1") is None else f"{paper['top1']:.1f}"
        lat, img_s = r.get("latency"), r.get("throughput_img_s")
        latency = "—" if not lat else f"{lat['median']:.2f} ({lat['min']:.2f}–{lat['max']:.2f}, IQR {lat['iqr']:.2f})"
        rows.append(
            f"| {name} | {_count(r['params'])} | {_paper_count(paper.get('params'), 1)} | {_count(r['macs'], 1)} "
            f"| {_paper_count(paper.get('macs'), 0)} | {latency} | {'—' if img_s is None else f'{img_s:.1f}'} "
            f"| {top1} | {phones} |"
        )
    return "\n".join(rows + [""] + _notes(results))


def format_line(result: Mapping[str, Any]) -> str:
    """One line per model for the plain output."""
    parts = [f"{result['model']}: {_count(result['params'])} params, {_count(result['macs'], 1)} MACs "
             f"({_count(result['macs_fvcore'], 1)} in fvcore's convention)"]
    lat = result.get("latency")
    if lat:
        parts.append(f"latency {lat['median']:.2f} ms median (min {lat['min']:.2f}, max {lat['max']:.2f}, "
                     f"IQR {lat['iqr']:.2f}; batch 1, {lat['threads']} thread)")
    tp = result.get("throughput")
    if tp:
        parts.append(f"throughput {tp['img_per_s']:.1f} img/s (batch {tp['batch']}, {tp['threads']} threads)")
    paper = result.get("paper")
    if paper and paper.get("params") is not None:
        parts.append(f"[paper {paper['name']}: {_paper_count(paper['params'], 1)} params, "
                     f"{_paper_count(paper['macs'], 0)} MACs]")
    return ", ".join(parts)


def _run(args: argparse.Namespace) -> int:
    options = inspect.signature(profile_models).parameters.keys() - {"names"}  # each a flag's dest
    results = profile_models(args.models, **{name: getattr(args, name) for name in options})
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    elif args.compare:
        print(format_compare_table(results))
    else:
        for r in results:
            print(format_line(r))
        print("\n".join(_notes(results)))
    return 0


def register(subparsers) -> None:
    """Add ``biasloss profile`` to the CLI."""
    p = subparsers.add_parser(
        "profile",
        description="Parameters, MACs (torch.utils.flop_counter: convolutions and linear layers), latency at "
                    "batch 1 on one thread and throughput at a larger batch with all threads, for any model name: "
                    "skipblocknet_xs/s/m/l, cifar_*, a timm name or torchvision.<name>. With several models the "
                    "timings are interleaved.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--image-size", dest="input_size", type=int, default=224,
                   help="square input side in pixels (default 224)")
    p.add_argument("--input-size", dest="input_size", type=int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the old name, hidden: --image-size as in export
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    p.add_argument("--in-chans", type=int, default=3, help="input channels (default 3)")
    p.add_argument("--small-input", action="store_true",
                   help="build the model's small-input variant (biasloss models, for 28-64 px)")
    p.add_argument("--batch-size", dest="batch", type=int, default=32, help="batch for the throughput (default 32)")
    p.add_argument("--batch", dest="batch", type=int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the old name, hidden: --batch-size as in train and eval
    p.add_argument("--reps", type=int, default=50, help="latency repetitions per model (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up rounds before timing (default 10)")
    p.add_argument("--throughput-reps", type=int, default=5, help="timed batches per model (default 5)")
    p.add_argument("--threads", type=int, default=1, help="threads for the latency (default 1)")
    p.add_argument("--no-latency", dest="latency", action="store_false",
                   help="counts only: no latency or throughput timing")
    p.add_argument("--no-throughput", dest="throughput", action="store_false", help="skip the throughput")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="time in contiguous memory format (default: channels-last, faster on CPU)")
    from biasloss.train.train_cli import add_device_flag

    add_device_flag(p, "the latency and throughput are measured there, and the output names it")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true",
                     help="print JSON: one object for one model, a list for several")
    out.add_argument("--compare", action="store_true",
                     help="print a markdown table with the paper's figures beside ours")
    p.set_defaults(func=_run)
