"""A trained checkpoint to a deployable file: ONNX or TorchScript, checked against PyTorch.

``biasloss export --checkpoint runs/x/best.pt --out model.onnx`` builds the model the checkpoint
describes with the weights ``train`` evaluated (the EMA's when the recipe keeps one), folds every
BatchNorm into its convolution (:func:`biasloss.models.fuse_bn`), exports it for the resolution it
was trained at, and runs the exported file (ONNX Runtime, or ``torch.jit.load``) on the same input
as the PyTorch model to report the largest difference. The file is written atomically. The model
expects images normalised with the dataset's mean and std, which the result lists (and the ONNX
file carries as metadata).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biasloss._checks import try_input
from biasloss._io import atomic_path, writable_file

__all__ = ["FORMATS", "export_checkpoint"]

FORMATS = ("onnx", "torchscript")
_TOLERANCE = 1e-3  # largest |exported - PyTorch| accepted, relative to the logits' scale


def _format_for(path: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = "onnx" if path.suffix == ".onnx" else "torchscript" if path.suffix in (".pt", ".ts") else ""
        if not fmt:
            raise ValueError(f"cannot tell the format from {path.name!r}: name it .onnx or .pt, or pass --format")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    return fmt


def _load_model(checkpoint: str | os.PathLike) -> tuple[nn.Module, str, Any]:
    from biasloss.data import get_dataset_spec
    from biasloss.train.checkpoint import load_checkpoint, training_args
    from biasloss.train.runner import model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    spec = get_dataset_spec(training_args(ckpt, checkpoint).dataset)
    if ckpt.get("num_classes"):  # folder datasets: the classes found in the data
        spec = dataclasses.replace(spec, num_classes=int(ckpt["num_classes"]))
    model, which = model_from_checkpoint(ckpt, spec, checkpoint)
    return model.eval(), which, spec


def _export_onnx(model: nn.Module, x: torch.Tensor, path: str, dynamic_batch: bool, metadata: dict[str, str]) -> None:
    dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dynamic, verbose=False)
    for key, value in metadata.items():
        program.model.metadata_props[key] = value
    program.save(path)


def _run_onnx(path: str, x: torch.Tensor) -> torch.Tensor | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def _export_torchscript(model: nn.Module, x: torch.Tensor, path: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream, still the format mobile runtimes read
        try:
            scripted, how = torch.jit.script(model), "script"
        except Exception:  # models with Python TorchScript cannot compile: record one forward instead
            with torch.no_grad():  # the inference graph (in-place ops where nothing needs gradients)
                scripted, how = torch.jit.trace(model, x), "trace"
        scripted.save(path)
    return how


def _run_torchscript(path: str, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(path)(x)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str | None = None,
    image_size: int | None = None,
    dynamic_batch: bool = True,
    fuse: bool = True,
    check: bool = True,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out``; return what was written and how close it is to PyTorch.

    Args:
        fmt: "onnx" or "torchscript" (default: from the suffix, .onnx or .pt).
        image_size: input side in pixels (default: the dataset's training resolution).
        dynamic_batch: ONNX only: any batch size (else the export's batch of 2).
        fuse: fold BatchNorm into the convolutions first.
        check: run the exported file and compare with PyTorch (ONNX needs ``onnxruntime``).

    Raises:
        ValueError: unknown format, bad size, unreadable checkpoint (``CheckpointError``), or an
            exported model that disagrees with PyTorch.
    """
    from biasloss.models import fuse_bn

    path = Path(out)
    fmt = _format_for(path, fmt)
    writable_file(path)
    model, which, spec = _load_model(checkpoint)
    size = spec.image_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"--image-size must be an int >= 8, got {size!r}")
    if fuse:
        fuse_bn(model)
    x = torch.randn(2, spec.in_chans, size, size, generator=torch.Generator().manual_seed(0))
    reference = try_input(model, x, f"--image-size {size}", spec.image_size)
    metadata = {"biasloss_model": str(model.__class__.__name__), "dataset": spec.name,
                "input": f"{spec.in_chans}x{size}x{size}", "mean": json.dumps(list(spec.mean)),
                "std": json.dumps(list(spec.std)), "num_classes": str(reference.shape[-1])}
    with atomic_path(path) as tmp_path:
        tmp = str(tmp_path)
        how = fmt
        if fmt == "onnx":
            _export_onnx(model, x, tmp, dynamic_batch, metadata)
        else:
            how = f"torchscript ({_export_torchscript(model, x, tmp)})"
        exported = None
        if check:  # ONNX with a dynamic batch: run another batch size than the export's
            inputs = x if fmt == "torchscript" or not dynamic_batch else torch.cat([x, x[:1]])
            expected = reference if inputs is x else torch.cat([reference, reference[:1]])
            with torch.no_grad():
                exported = _run_onnx(tmp, inputs) if fmt == "onnx" else _run_torchscript(tmp, inputs)
        diff = None if exported is None else float((exported - expected).abs().max())
        scale = float(reference.abs().max()) or 1.0
        if diff is not None and not diff <= _TOLERANCE * max(scale, 1.0):
            raise ValueError(f"the exported model differs from PyTorch by {diff:.3g} (logits up to {scale:.3g})")
    return {
        "path": str(path), "format": how, "weights": which, "bn_fused": fuse,
        "input": ["batch" if fmt == "onnx" and dynamic_batch else 2, spec.in_chans, size, size],
        "mean": list(spec.mean), "std": list(spec.std), "num_classes": int(reference.shape[-1]),
        "max_abs_diff": diff, "checked": diff is not None, "bytes": path.stat().st_size,
    }
