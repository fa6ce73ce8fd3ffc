"""Deployment: TorchScript, ONNX (checked in ONNX Runtime), BatchNorm fusion."""

from __future__ import annotations

import copy
import warnings
from collections import Counter

import pytest
import torch
from conftest import randomise_bn
from torch import nn

from biasloss.models import fuse_bn, skipblocknet_m, skipblocknet_xs


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still supported
        return torch.jit.script(model)


def test_torchscript_script(tmp_path):
    model = randomise_bn(skipblocknet_xs(num_classes=10)).eval()
    scripted = _script(model)
    path = tmp_path / "m.pt"
    scripted.save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        for size in (64, 97):  # any resolution: the skip pooling is scripted, not traced
            x = torch.randn(2, 3, size, size)
            ref = model(x)
            torch.testing.assert_close(scripted(x), ref)
            torch.testing.assert_close(loaded(x), ref)
        torch.testing.assert_close(scripted.forward_features(x), model.forward_features(x))


def test_torchscript_trace_fused():
    model = fuse_bn(randomise_bn(skipblocknet_xs(num_classes=10))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x))


def test_fuse_bn_removes_every_batchnorm_and_keeps_the_function():
    model = randomise_bn(skipblocknet_xs()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fused = fuse_bn(copy.deepcopy(model))
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        torch.testing.assert_close(fused(x), ref, rtol=1e-4, atol=1e-5)
        # channels-last weights stay channels-last
        cl = fuse_bn(copy.deepcopy(model).to(memory_format=torch.channels_last))
        assert cl.stages[1].blocks[0].conv_dw.weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-5)


def test_fuse_bn_torchvision_mobilenet():
    torchvision = pytest.importorskip("torchvision")
    model = randomise_bn(torchvision.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = fuse_bn(model)(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_fuse_bn_training_model_left_alone_where_unfoldable():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU())
    fuse_bn(model)
    assert isinstance(model[1], nn.BatchNorm2d)  # no running statistics: nothing to fold


def _export(model: nn.Module, x: torch.Tensor, path, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False, **kwargs)


def _session(path):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_onnx_matches_pytorch_and_is_lean(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = randomise_bn(skipblocknet_m()).eval()
    x = torch.randn(2, 3, 224, 224)
    path = tmp_path / "skipblocknet_m.onnx"
    _export(model, x, path, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))

    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    # BatchNorm folded, SE without reshapes, skip pooling as plain AveragePool: a graph of the
    # same kinds of nodes as torchvision's MobileNetV3 (plus the two skip-block pools)
    allowed = {"Conv", "HardSwish", "Relu", "HardSigmoid", "Add", "Mul", "ReduceMean", "AveragePool",
               "Gemm", "Reshape", "Flatten"}
    assert set(ops) <= allowed, ops
    assert ops["Conv"] == 69 and ops["AveragePool"] == 2 and ops["Reshape"] + ops["Flatten"] <= 1

    sess = _session(path)
    name = sess.get_inputs()[0].name
    for batch in (1, 3):  # dynamic batch
        xb = torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            ref = model(xb).numpy()
        out = sess.run(None, {name: xb.numpy()})[0]
        assert out.shape == (batch, 1000)
        assert abs(out - ref).max() <= 1e-4 * max(1.0, abs(ref).max())


def test_executorch_sidecar_keeps_numbers_and_lists(tmp_path):
    """model.pte.json holds numbers as numbers and lists as lists (ONNX metadata_props must be strings; JSON need not)."""
    import json

    from biasloss.export import _write_sidecar, metadata_path

    _write_sidecar(tmp_path / "m.pte", {"dataset": "digits", "input": "1x32x32", "mean": "[0.3052]",
                                        "std": "[0.3236]", "num_classes": "10", "top1_fp32": "97.2222",
                                        "test_images": "360 images of digits test"})
    meta = json.loads(metadata_path(tmp_path / "m.pte").read_text())
    assert meta == {"dataset": "digits", "input": [1, 32, 32], "mean": [0.3052], "std": [0.3236], "num_classes": 10,
                    "top1_fp32": 97.2222, "test_images": "360 images of digits test"}
