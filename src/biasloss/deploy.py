"""On-device runtimes and int8: ONNX Runtime (QDQ) and ExecuTorch (XNNPACK).

The paper times SkipblockNet-M in PyTorch Mobile on phones (Table 2, single-threaded). Its
successor is ExecuTorch, whose XNNPACK backend runs fp32 and int8 models on ARM and x86 CPUs;
ONNX Runtime is the other runtime mobile users deploy with. This module holds what both need
(export, int8 quantization, running the file), for any PyTorch image classifier (ours, timm's,
torchvision's), so that :mod:`biasloss.export` and ``benchmarks/bench_deploy.py`` take one path.

Every runtime is an optional dependency (``pip install -e '.[deploy]'`` in the checkout); a missing
one is a :class:`~biasloss.errors.MissingDependencyError` (an ``ImportError``; ``MissingRuntimeError``
is its old name here), which the command line reports in one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biasloss.errors import MissingDependencyError

__all__ = [
    "DEPLOY_EXTRA",
    "ONNX_INPUT",
    "ONNX_OUTPUT",
    "MissingRuntimeError",
    "executorch_method",
    "global_pool_spatial_means",
    "onnx_session",
    "quantize_onnx",
    "quiet",
    "require",
    "to_executorch",
    "to_onnx",
]

DEPLOY_EXTRA = "pip install -e '.[deploy]' in the biasloss checkout"
#: The old name of :class:`~biasloss.errors.MissingDependencyError` (a package of the ``deploy`` extra is missing).
MissingRuntimeError = MissingDependencyError


def require(module: str, what: str) -> Any:
    """Import ``module`` (e.g. ``"onnxruntime.quantization"``) or raise
    :class:`~biasloss.errors.MissingDependencyError` saying that ``what`` needs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise MissingDependencyError(f"{what} needs {top}: {DEPLOY_EXTRA}", name=top) from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No warnings or log lines from the exporters and quantizers (they log to the root logger)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def onnx_session(path: str | os.PathLike, threads: int | None = None, *, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session of ``path``: all graph optimisations, sequential execution,
    ``threads`` intra-op threads (default: as many as PyTorch uses)."""
    ort = require("onnxruntime", "running an ONNX model")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


#: The names of the input and output of every ONNX model :func:`to_onnx` writes.
ONNX_INPUT, ONNX_OUTPUT = "images", "logits"


def to_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, *, dynamic_batch: bool = True,
            metadata: dict[str, str] | None = None) -> None:
    """Export ``model`` (in eval mode) for inputs shaped like ``example`` to one ONNX file at
    ``path`` (weights inside), any batch size when ``dynamic_batch``, with ``metadata`` as the
    model's ``metadata_props`` and spatial means as ``GlobalAveragePool``
    (:func:`global_pool_spatial_means`). Its input is named :data:`ONNX_INPUT` (``images``), its
    output :data:`ONNX_OUTPUT` (``logits``)."""
    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None  # positional: any forward(x) name
    with quiet():
        proto = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dynamic, verbose=False,
                                  input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT]).model_proto
    global_pool_spatial_means(proto)
    onnx.helper.set_model_props(proto, dict(metadata or {}))
    onnx.save(proto, str(path))


def global_pool_spatial_means(model: Any) -> int:
    """Rewrite, in place, every ``ReduceMean`` of a 4-D tensor over axes 2 and 3 with
    ``keepdims=1`` in the ONNX ``model`` (a ``ModelProto``) as ``GlobalAveragePool``, which
    computes the same; returns how many were rewritten. Tensors whose rank shape inference
    cannot tell are left alone. (``torch.onnx.export`` makes ``ReduceMean`` of ``mean((2, 3))``
    and of ``adaptive_avg_pool2d(x, 1)``; ONNX Runtime runs it in float between a dequantize and a
    quantize, ``GlobalAveragePool`` in int8: ``QLinearGlobalAveragePool``.)"""
    onnx = require("onnx", "rewriting an ONNX graph")
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*inferred.input, *inferred.value_info)
             if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
    rewritten = 0
    for i, node in enumerate(list(graph.node)):
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes", constants.get(node.input[1]) if len(node.input) > 1 else None)
        if axes is None or attrs.get("keepdims", 1) != 1 or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3]:
            continue
        graph.node.remove(node)
        graph.node.insert(i, helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name))
        rewritten += 1
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:  # the axes the means took
        graph.initializer.remove(init)
    return rewritten


def quantize_onnx(fp32: str | os.PathLike, int8: str | os.PathLike, batches: Iterable[torch.Tensor]) -> None:
    """ONNX Runtime's static QDQ quantization of the model at ``fp32`` into ``int8``: per-channel
    int8 weights, uint8 activations, ranges from ``batches`` (MinMax)."""
    q = require("onnxruntime.quantization", "int8 export")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="biasloss-int8-") as work, quiet():
        # shape inference and ONNX Runtime's basic graph optimisations (constant folding, Conv+Add
        # fusion), as ONNX Runtime's quantization guide recommends before quantizing
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        name = require("onnx", "int8 export").load(str(prepared), load_external_data=False).graph.input[0].name
        feeds = iter([{name: b.contiguous().numpy()} for b in batches])

        class Reader(q.CalibrationDataReader):
            def get_next(self):
                return next(feeds, None)

        # MinMax: on digits, Percentile and Entropy were no better (same top-1, or 0.3-0.8 points less) and 2-3x slower.
        # reduce_range: 7-bit weights. ONNX Runtime's uint8 x int8 kernels on x86 CPUs without VNNI (AVX2) can
        # saturate their 16-bit intermediate sums; a file must score the same wherever it is deployed (measured on
        # an AVX2 AMD EPYC, a digits ResNet: 1.11 points below fp32 with 8-bit weights, 0.00 with 7-bit).
        q.quantize_static(str(prepared), str(int8), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          reduce_range=True, weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8,
                          calibrate_method=q.CalibrationMethod.MinMax)


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` with row-major strides. ExecuTorch reads a tensor's dimension order from its strides,
    and a one-channel image batch from a channels-last pipeline is contiguous in both layouts
    (``is_contiguous()`` is True) while its strides say channels-last."""
    row_major = tuple(torch.empty(x.shape, device="meta").stride())
    return x if x.stride() == row_major else x.clone(memory_format=torch.contiguous_format)


def to_executorch(model: nn.Module, example: torch.Tensor, path: str | os.PathLike,
                  calibration: Sequence[torch.Tensor] | None = None) -> None:
    """Lower ``model`` (in eval mode) for inputs shaped like ``example`` to an ExecuTorch program
    on the XNNPACK backend at ``path`` (``.pte``): fp32, or with ``calibration`` batches int8
    (PT2E static quantization, XNNPACK's symmetric config: per-channel int8 weights, int8
    activations)."""
    with quiet(), torch.no_grad():  # importing them logs torch deprecation warnings
        require("executorch", "ExecuTorch export")
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        example = _dense(example)
        program = torch.export.export(model, (example,))
        if calibration is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(program.module(), quantizer)
            for batch in calibration:
                for image in batch.split(example.shape[0]):
                    if image.shape[0] == example.shape[0]:
                        prepared(_dense(image))
            program = torch.export.export(convert_pt2e(prepared), (example,))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    Path(path).write_bytes(lowered.buffer)


def executorch_method(path: str | os.PathLike) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``forward`` of the ExecuTorch program at ``path`` as a function of one input tensor."""
    with quiet():  # importing torchao logs a torch deprecation warning
        require("executorch", "running an ExecuTorch program")
        from executorch.runtime import Runtime

    with _native_stderr_silenced():  # loading XNNPACK's delegate prints cpuinfo's probing from C++
        method = Runtime.get().load_program(str(path)).load_method("forward")
    return lambda x: method.execute([_dense(x)])[0]


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """What native code writes to the process's stderr (file descriptor 2) in the block is held
    back, and written out only when the block fails: the runtimes' C++ libraries print diagnostics
    that no warning filter or logger reaches."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr: nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
