"""A trained checkpoint to a deployable file: ONNX, ExecuTorch or TorchScript, checked against PyTorch.

``biasloss export --checkpoint runs/x/best.pt --out model.onnx`` builds the model the checkpoint
describes with the weights ``train`` evaluated (the EMA's when the recipe keeps one), folds every
BatchNorm into its convolution (:func:`biasloss.models.fuse_bn`), exports it for the resolution it
was trained at, and runs the exported file (ONNX Runtime, ExecuTorch or ``torch.jit.load``) on the
same input as the PyTorch model to report the largest difference. The file is written atomically.
The model expects images normalised with the dataset's mean and std, which the result lists (and
the file carries as metadata: the ONNX model's ``metadata_props``, or ``model.pte.json`` beside an
ExecuTorch program). The runtimes come from :mod:`biasloss.deploy`.

``--int8`` (:func:`export_int8`) adds ``model.int8.onnx`` or ``model.int8.pte`` beside the fp32 file.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biasloss._checks import is_out_of_memory, one_line, try_input
from biasloss._io import atomic_path, atomic_write_text, writable_file
from biasloss.deploy import (
    ONNX_INPUT,
    executorch_method,
    onnx_session,
    quantize_onnx,
    quiet,
    require,
    to_executorch,
    to_onnx,
)
from biasloss.errors import BiaslossError, InputError

__all__ = ["FORMATS", "Int8AccuracyError", "export_checkpoint", "export_int8", "int8_path", "metadata_path"]

FORMATS = ("onnx", "torchscript", "executorch")
_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pte": "executorch"}
_TOLERANCE = 1e-3  # largest |exported - PyTorch| accepted, relative to the logits' scale
_CALIBRATION_SEED = 0  # which training images calibrate: the first N of this seed's epoch-0 order
_BATCH = 64  # images per ONNX Runtime call, calibrating and evaluating
_QUANTIZATION = {
    "onnx": "onnxruntime static QDQ, per-channel int8 weights, uint8 activations, MinMax calibration",
    "executorch": "PT2E static, XNNPACK symmetric config: per-channel int8 weights, int8 activations",
}


def _format_for(path: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = _SUFFIXES.get(path.suffix, "")
        if not fmt:
            raise InputError(f"cannot tell the format from {path.name!r}: name it .onnx, .pt or .pte, or pass --format")
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    implied = _SUFFIXES.get(path.suffix)
    if implied is not None and implied != fmt:  # a model.onnx holding TorchScript misleads every reader
        raise InputError(f"--out {path.name!r} has the suffix of {implied} files but --format is {fmt}: "
                         f"rename --out or drop --format")
    return fmt


def metadata_path(path: str | os.PathLike) -> Path:
    """Where the metadata of an ExecuTorch program lives (a ``.pte`` has no field for it): model.pte.json."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _set_metadata(path: Path, values: dict[str, str]) -> None:
    """Add ``values`` to the ``metadata_props`` of the ONNX model at ``path``."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props} | values
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


_TYPES: dict[str, Callable[[str], Any]] = {
    "mean": json.loads, "std": json.loads, "input": lambda v: [int(side) for side in v.split("x")],
    "num_classes": int, "top1_fp32": float, "top1_int8": float}


def _write_sidecar(program: Path, values: dict[str, str]) -> None:
    """The metadata ``values`` (strings, as ONNX's ``metadata_props`` must hold them) of the
    ExecuTorch program ``program``, in :func:`metadata_path`, with their own JSON types: ``mean``
    and ``std`` lists, ``input`` a list of ints (``"1x32x32"`` -> ``[1, 32, 32]``), ``num_classes``
    an int, the top-1s numbers; the rest stay strings."""
    typed = {key: _TYPES.get(key, str)(value) for key, value in values.items()}
    atomic_write_text(metadata_path(program), json.dumps(typed, indent=1) + "\n")


def _runner(path: str | os.PathLike, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported model at ``path`` as a function of a batch, run in its runtime: ONNX Runtime,
    ``torch.jit.load``, or ExecuTorch one image at a time (the batch it was exported for)."""
    if fmt == "onnx":
        session = onnx_session(path)
        return lambda images: torch.from_numpy(session.run(None, {ONNX_INPUT: images.contiguous().numpy()})[0])
    if fmt == "executorch":
        forward = executorch_method(path)
        return lambda images: torch.cat([forward(image[None]) for image in images])
    with quiet():  # torch.jit is deprecated upstream
        return torch.jit.load(str(path))


def _export_to(model: nn.Module, which: str, spec, tmp: Path, fmt: str, image_size: int | None,
               dynamic_batch: bool, fuse: bool, check: bool, device: torch.device) -> dict[str, Any]:
    """Export ``model`` (on the CPU) to ``tmp`` (the temporary file of an :func:`atomic_path`) and
    check it against the model run on ``device``; the result of :func:`export_checkpoint` less
    ``path`` and ``bytes``."""
    from biasloss.models import fuse_bn

    size = spec.image_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise InputError(f"--image-size must be an int >= 8, got {size!r}")
    if fuse:
        fuse_bn(model)
    try:  # an input too large for memory is the flag's fault, said in one line as by try_input
        x = torch.randn(2, spec.in_chans, size, size, generator=torch.Generator().manual_seed(0))
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        raise InputError(f"--image-size {size}: a {(2, spec.in_chans, size, size)} input does not fit in memory "
                         f"({one_line(e)})") from None
    reference = try_input(model, x, f"--image-size {size}", spec.image_size)  # on the CPU: a size check
    if device.type != "cpu":  # by a copy (the export is the CPU model's); on CUDA without TensorFloat-32: float32
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            reference = copy.deepcopy(model).to(device)(x.to(device)).cpu()
    metadata = {"biasloss_model": type(model).__name__, "dataset": spec.name,
                "input": f"{spec.in_chans}x{size}x{size}", "mean": json.dumps(list(spec.mean)),
                "std": json.dumps(list(spec.std)), "num_classes": str(reference.shape[-1])}
    how = fmt
    if fmt == "onnx":
        to_onnx(model, x, tmp, dynamic_batch=dynamic_batch, metadata=metadata)
    elif fmt == "executorch":  # batch 1, as on a phone
        x, reference = x[:1], reference[:1]
        to_executorch(model, x, tmp)
        how = "executorch (xnnpack)"
    else:
        with quiet():  # torch.jit is deprecated upstream, still the format mobile runtimes read
            try:
                scripted, how = torch.jit.script(model), "torchscript (script)"
            except Exception:  # models with Python TorchScript cannot compile: record one forward instead
                with torch.no_grad():  # the inference graph (in-place ops where nothing needs gradients)
                    scripted, how = torch.jit.trace(model, x), "torchscript (trace)"
            scripted.save(str(tmp))
    diff = None
    if check:  # ONNX with a dynamic batch: run another batch size than the export's
        inputs = x if fmt != "onnx" or not dynamic_batch else torch.cat([x, x[:1]])
        expected = reference if inputs is x else torch.cat([reference, reference[:1]])
        try:
            run = _runner(tmp, fmt)
        except ImportError:  # no onnxruntime: the ONNX file is not checked
            if fmt != "onnx":
                raise
        else:
            with torch.no_grad():
                diff = float((run(inputs) - expected).abs().max())
    scale = float(reference.abs().max()) or 1.0
    if diff is not None and not diff <= _TOLERANCE * max(scale, 1.0):
        raise ValueError(f"the exported model differs from PyTorch by {diff:.3g} (logits up to {scale:.3g})")
    return {
        "format": how, "weights": which, "bn_fused": fuse,
        "input": ["batch" if fmt == "onnx" and dynamic_batch else x.shape[0], spec.in_chans, size, size],
        "mean": list(spec.mean), "std": list(spec.std), "num_classes": int(reference.shape[-1]),
        "max_abs_diff": diff, "checked": diff is not None, "metadata": metadata,
    }


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str | None = None,
    image_size: int | None = None,
    dynamic_batch: bool = True,
    fuse: bool = True,
    check: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out``; return what was written and how close it is to PyTorch.

    Args:
        fmt: one of :data:`FORMATS` (default: from the suffix: .onnx, .pte, .pt or .ts).
        image_size: input side in pixels (default: the dataset's training resolution).
        dynamic_batch: ONNX only: any batch size (else the export's batch of 2).
        fuse: fold BatchNorm into the convolutions first.
        check: run the exported file and compare with PyTorch (ONNX needs ``onnxruntime``).
        device: where the checkpoint's model computes the PyTorch reference (default: CUDA where
            there is one, else the CPU); the export itself is always made on the CPU, so a
            TorchScript file loads as a CPU model wherever it was made.

    Raises:
        ValueError: unknown format, bad size, unreadable checkpoint (``CheckpointError``), or an
            exported model that disagrees with PyTorch.
    """
    from biasloss.train.distributed import resolve_device
    from biasloss.train.saved_run import load_run

    path = Path(out)
    fmt = _format_for(path, fmt)
    dev = resolve_device(device)
    writable_file(path)
    run = load_run(checkpoint)
    model, which, spec = run.model(), run.weights, run.spec
    with atomic_path(path) as tmp:
        result = _export_to(model, which, spec, tmp, fmt, image_size, dynamic_batch, fuse, check, dev)
    metadata = result.pop("metadata")
    if fmt == "executorch":
        _write_sidecar(path, metadata)
    return {"path": str(path), **result, "bytes": path.stat().st_size}


# ---------------------------------------------------------------------------------------------
# int8: ONNX Runtime static quantization, calibrated on the training split
# ---------------------------------------------------------------------------------------------


class Int8AccuracyError(BiaslossError, ValueError):
    """The int8 model's top-1 fell more than ``max_drop`` points below the fp32 model's; the fp32
    file was written (``fp32_path``), the int8 one was not. The command line reports it in one
    line, exit status 2."""

    def __init__(self, message: str, *, top1_fp32: float, top1_int8: float, fp32_path: str) -> None:
        super().__init__(message)
        self.top1_fp32, self.top1_int8, self.fp32_path = top1_fp32, top1_int8, fp32_path


def int8_path(out: str | os.PathLike) -> Path:
    """Where :func:`export_int8` writes the int8 model for the fp32 ``out``: model.onnx -> model.int8.onnx."""
    out = Path(out)
    return out.with_name(f"{out.stem}.int8{out.suffix}")


def _calibration_images(loader, n: int) -> list[torch.Tensor]:
    """The first ``n`` images of the (unaugmented, seeded) training loader's epoch 0, in batches."""
    loader.set_epoch(0)
    batches, taken = [], 0
    for images, _ in loader:
        batches.append(images[: n - taken].contiguous())
        taken += batches[-1].shape[0]
        if taken >= n:
            break
    return batches


def _top1(path: Path, fmt: str, loader) -> tuple[float, int]:
    """Top-1 (%) over ``loader`` of the exported model at ``path``, run in its runtime (:func:`_runner`),
    and the images seen."""
    logits = _runner(path, fmt)
    correct = total = 0
    for images, labels in loader:
        correct += int((logits(images).argmax(1) == labels).sum())
        total += int(labels.numel())
    return round(100.0 * correct / max(total, 1), 4), total


def export_int8(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    calibrate: int = 512,
    max_drop: float = 1.0,
    data_dir: str | os.PathLike | None = None,
    calibration_dataset: str | None = None,
    fmt: str | None = None,
    image_size: int | None = None,
    dynamic_batch: bool = True,
    fuse: bool = True,
    check: bool = True,
    workers: int | None = None,
    progress: Callable[[str], object] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Export ``checkpoint`` to the fp32 ONNX or ExecuTorch ``out`` (as :func:`export_checkpoint`) and
    quantize it to ``<stem>.int8.onnx`` / ``<stem>.int8.pte`` beside it; return what
    :func:`export_checkpoint` does plus ``int8_path``, ``int8_bytes``, ``top1_fp32``, ``top1_int8``,
    ``top1_drop``, ``test_images``, ``calibration`` and ``quantization``.

    Quantization is static and post-training (:func:`biasloss.deploy.quantize_onnx`, ONNX Runtime's
    QDQ; :func:`biasloss.deploy.to_executorch`, PT2E with XNNPACK's quantizer), calibrated on
    ``calibrate`` images of the checkpoint's training split (the same ``limit`` train used),
    unaugmented as at test time, in a fixed seeded order, so two exports write the same file. Both
    files are then evaluated in their runtime on the whole test split; both top-1s, the calibration
    and the quantization are written into the metadata of both files (beside the fp32 export's mean,
    std, input and number of classes).

    Args:
        calibrate: how many training images calibrate the activation ranges (all when fewer).
        max_drop: the most top-1 points the int8 model may lose; beyond it the fp32 file is kept
            and no int8 file is written (:class:`Int8AccuracyError`).
        data_dir: where the dataset lives (default: where the checkpoint's training found it).
        calibration_dataset: must be the checkpoint's training dataset (its default).
        fmt, image_size, dynamic_batch: must leave the export ONNX at the training resolution with
            any batch size (the test split is evaluated in batches).
        fuse, check, device, workers: as for :func:`export_checkpoint`; DataLoader workers for folder
            datasets. The int8 file is calibrated and both files are evaluated on the CPU.
        progress: called with a short line as each slow phase starts (exporting, evaluating fp32,
            calibrating and quantizing, evaluating int8); the command line prints them on stderr.

    Raises:
        ImportError: onnx, onnxruntime or onnxscript (ExecuTorch: executorch, torchao) is missing
            (``pip install -e '.[deploy]'``): :class:`biasloss.errors.MissingDependencyError`.
        ValueError: bad arguments, a checkpoint that does not record its training set
            (``CheckpointError``), calibration data from another dataset, or an int8 model more than
            ``max_drop`` points worse (:class:`Int8AccuracyError`).
        DatasetNotFoundError: the dataset is not where the checkpoint or ``data_dir`` says.
    """
    from biasloss.data import build_loaders
    from biasloss.train.checkpoint import CheckpointError, ForeignCheckpointError
    from biasloss.train.distributed import resolve_device
    from biasloss.train.saved_run import load_run

    say = progress if progress is not None else (lambda line: None)
    path = Path(out)
    fmt = _format_for(path, fmt)
    dev = resolve_device(device)
    if fmt not in _QUANTIZATION:
        raise InputError(f"--int8 quantizes an ONNX or ExecuTorch export; name --out *.onnx or *.pte "
                         f"(got {path.name!r}, format {fmt})")
    if isinstance(calibrate, bool) or not isinstance(calibrate, int) or calibrate <= 0:
        raise InputError(f"--calibrate must be a positive number of images, got {calibrate!r}")
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not (
            math.isfinite(max_drop) and max_drop >= 0):
        raise InputError(f"--max-drop must be a number of top-1 points >= 0, got {max_drop!r}")
    if fmt == "onnx" and not dynamic_batch:
        raise InputError("--int8 evaluates the test split in batches; drop --static-batch")
    needed = ("onnx", "onnxruntime.quantization", "onnxscript") if fmt == "onnx" else ("executorch", "torchao")
    with quiet():  # importing torchao logs a torch deprecation warning
        for module in needed:  # onnxscript: torch.onnx.export's; torchao: ExecuTorch's quantizer
            require(module, "int8 export")
    try:
        run = load_run(checkpoint)
    except ForeignCheckpointError as e:  # a bare state dict does not name the training set
        raise CheckpointError(f"int8 export needs a checkpoint written by 'biasloss train', which records the "
                              f"training set to calibrate on: {e}") from None
    saved = run.settings
    if calibration_dataset is not None and calibration_dataset != saved.dataset:
        raise InputError(f"calibration must come from the checkpoint's training set ({saved.dataset}), "
                         f"not {calibration_dataset}: the activation ranges are those of the data the model sees")
    out8 = int8_path(path)
    writable_file(path)
    model, which, spec = run.model(), run.weights, run.spec
    if image_size is not None and image_size != spec.image_size:
        raise InputError(f"--int8 evaluates on the test split at the training resolution ({spec.image_size} px); "
                         f"drop --image-size {image_size}")
    # the data train evaluated on (its directory and limit); unaugmented training images calibrate
    train_loader, test_loader, _ = build_loaders(
        saved.dataset, data_dir=data_dir if data_dir is not None else saved.data_dir, batch_size=_BATCH,
        device="cpu", seed=_CALIBRATION_SEED, workers=4 if workers is None else workers, limit=saved.limit)
    try:
        say(f"reading {calibrate} calibration images of {saved.dataset} train")
        batches = _calibration_images(train_loader, calibrate)
        train_loader.close()
        n_calibration = sum(b.shape[0] for b in batches)
        calibration = (f"{n_calibration} images of {saved.dataset} train "
                       f"(seed {_CALIBRATION_SEED}, evaluation transform)")
        rejected: Int8AccuracyError | None = None
        with quiet(), atomic_path(path) as tmp32:
            say(f"exporting the fp32 model to {fmt}")
            result = _export_to(model, which, spec, tmp32, fmt, None, True, fuse, check, dev)
            metadata = result.pop("metadata")
            say(f"evaluating fp32 on {saved.dataset} test")
            top1_fp32, n_test = _top1(tmp32, fmt, test_loader)
            measured = {"top1_fp32": f"{top1_fp32:.4f}", "test_images": f"{n_test} images of {saved.dataset} test"}
            try:
                with atomic_path(out8) as tmp8:
                    say(f"calibrating on {n_calibration} images and quantizing to int8")
                    if fmt == "onnx":
                        quantize_onnx(tmp32, tmp8, batches)
                    else:  # the fp32 model, BatchNorm folded by the export, batch 1 as exported
                        to_executorch(model, batches[0][:1], tmp8, batches)
                    say(f"evaluating int8 on {n_test} images of {saved.dataset} test")
                    top1_int8, _ = _top1(tmp8, fmt, test_loader)
                    drop = round(top1_fp32 - top1_int8, 4)
                    if drop > max_drop:
                        rejected = Int8AccuracyError(
                            f"int8 top-1 {top1_int8:.2f} % is {drop:.2f} points below fp32 {top1_fp32:.2f} %, "
                            f"more than --max-drop {float(max_drop)}; kept the fp32 export {path}",
                            top1_fp32=top1_fp32, top1_int8=top1_int8, fp32_path=str(path))
                        raise rejected  # leaves the block: the int8 temporary file goes
                    measured |= {"top1_int8": f"{top1_int8:.4f}", "calibration": calibration,
                                 "quantization": _QUANTIZATION[fmt]}
                    if fmt == "onnx":
                        _set_metadata(tmp8, measured)
            except Int8AccuracyError:
                out8.unlink(missing_ok=True)  # the int8 file of an earlier export does not match this one
                metadata_path(out8).unlink(missing_ok=True)
            if fmt == "onnx":  # the fp32 file is kept in any case, with its own top-1
                _set_metadata(tmp32, measured)
    finally:
        train_loader.close()
        test_loader.close()
    if fmt == "executorch":
        _write_sidecar(path, metadata | measured)
        if rejected is None:
            _write_sidecar(out8, metadata | measured)
    if rejected is not None:
        raise rejected
    return {"path": str(path), **result, "bytes": path.stat().st_size, "int8_path": str(out8),
            "int8_bytes": out8.stat().st_size, "top1_fp32": top1_fp32, "top1_int8": top1_int8,
            "top1_drop": drop, "test_images": n_test, "calibration": calibration, "quantization": _QUANTIZATION[fmt]}
