"""``biasloss export --int8``: ONNX Runtime and ExecuTorch static quantization, calibrated on the training split.

A tiny ResNet (timm's ``test_resnet``, 0.37M parameters) is trained on scikit-learn's digits for
3 epochs (about 7 s on one thread; 97-98 % top-1 on the 360 test images), exported and
quantized; the figures the export reports are checked against an evaluation written here, from
the raw digits arrays and the file's own metadata.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from biasloss.cli import main

FAST = ["--dataset", "digits", "--model", "test_resnet", "--epochs", "3", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn (pip install -e '.[data]')")
    pytest.importorskip("onnxruntime", reason="int8 export needs onnxruntime (pip install -e '.[deploy]')")
    import timm

    if "test_resnet" not in timm.list_models("test_resnet"):
        pytest.skip("this timm has no test_resnet (a newer timm has)")
    out = tmp_path_factory.mktemp("deploy") / "run"
    assert main(["train", *FAST, "--out", str(out)]) == 0
    return out


def _export(argv: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", *argv])
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def exported(run) -> dict:
    """``biasloss export --int8 --json`` of the trained run's best.pt: its result."""
    out = run.parent / "export" / "model.onnx"
    code, stdout = _export(["--checkpoint", str(run / "best.pt"), "--out", str(out), "--int8", "--json"])
    assert code == 0
    return json.loads(stdout)


def _metadata(path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _top1_by_hand(path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 (%) of the ONNX file in ONNX Runtime on uint8 NHWC ``images``, preprocessed as its
    metadata says (x / 255 - mean) / std, in the float32 arithmetic of the training loader."""
    import onnxruntime as ort

    meta = _metadata(path)
    mean = np.float32(json.loads(meta["mean"])).reshape(1, -1, 1, 1)
    std = np.float32(json.loads(meta["std"])).reshape(1, -1, 1, 1)
    x = images.transpose(0, 3, 1, 2).astype(np.float32)
    x = (x - mean * np.float32(255)) * (np.float32(1) / (std * np.float32(255)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x)})
    return round(100.0 * float((logits.argmax(1) == labels).mean()), 4)


def test_int8_top1_is_close_to_fp32_and_both_are_what_an_independent_evaluation_gives(run, exported):
    from biasloss.data import load_arrays

    fp32, int8 = Path(exported["path"]), Path(exported["int8_path"])
    assert int8 == fp32.with_name("model.int8.onnx") and int8.is_file()
    assert exported["test_images"] == 360  # the whole digits test split
    # a trained model, else a small drop would mean nothing: chance is 10 %
    assert exported["top1_fp32"] >= 90.0, exported
    # 360 test images: one is 0.28 points. Static int8 with per-channel weights keeps a small ReLU
    # CNN's predictions but for a few borderline images; 2 points (7 images) either way is a margin
    # such noise stays within (measured: 0 images changed), while a broken quantization (wrong
    # scales, the input left unnormalised) costs tens of points.
    assert abs(exported["top1_fp32"] - exported["top1_int8"]) <= 2.0, exported
    assert exported["top1_drop"] == pytest.approx(exported["top1_fp32"] - exported["top1_int8"], abs=1e-3)

    data = load_arrays("digits")
    images, labels = data.test_images.numpy(), data.test_labels.numpy()
    assert _top1_by_hand(fp32, images, labels) == exported["top1_fp32"]
    assert _top1_by_hand(int8, images, labels) == exported["top1_int8"]
    # and the fp32 file scores what PyTorch scored when train kept best.pt (one image apart at most:
    # ONNX Runtime and PyTorch round differently)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert abs(max(m["val_top1"] for m in metrics) - exported["top1_fp32"]) <= 100 / 360 + 1e-6


def test_int8_file_is_quantized_and_smaller(exported):
    import onnx
    from onnx import TensorProto

    model = onnx.load(exported["int8_path"])
    nodes = model.graph.node
    init = {t.name: t for t in model.graph.initializer}
    ops = {n.op_type for n in nodes}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    producer = {out: n for n in nodes for out in n.output}
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert convs
    for conv in convs:  # every convolution's weight: an int8 initializer, dequantized per output channel
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear", conv.name
        weight, scale = init[dq.input[0]], init[dq.input[1]]
        assert weight.data_type == TensorProto.INT8, conv.name
        assert len(scale.dims) == 1 and scale.dims[0] == weight.dims[0] > 1, conv.name  # per channel
        assert producer[conv.input[0]].op_type == "DequantizeLinear", conv.name  # a quantized activation
    activation_zero_points = [init[n.input[2]] for n in nodes if n.op_type == "QuantizeLinear"]
    assert activation_zero_points and all(z.data_type == TensorProto.UINT8 for z in activation_zero_points)
    assert not any(t.data_type == TensorProto.FLOAT and len(t.dims) == 4 for t in model.graph.initializer)

    fp32 = onnx.load(exported["path"])
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in fp32.graph.node}
    assert exported["bytes"] == Path(exported["path"]).stat().st_size
    assert exported["int8_bytes"] == Path(exported["int8_path"]).stat().st_size
    assert exported["int8_bytes"] < exported["bytes"] / 2  # weights 4x smaller, plus scales (measured 3.4x)


def test_metadata_round_trips_in_both_files(exported):
    from biasloss.data import get_dataset_spec

    spec = get_dataset_spec("digits")
    for path in (exported["path"], exported["int8_path"]):
        meta = _metadata(path)
        assert float(meta["top1_fp32"]) == exported["top1_fp32"], path
        assert float(meta["top1_int8"]) == exported["top1_int8"], path
        assert meta["calibration"] == "512 images of digits train (seed 0, evaluation transform)" == \
            exported["calibration"]
        assert meta["quantization"] == exported["quantization"]
        assert "QDQ" in meta["quantization"] and "per-channel int8 weights, uint8 activations" in meta["quantization"]
        assert meta["test_images"] == "360 images of digits test"
        # what the fp32 export records, kept in the int8 file
        assert json.loads(meta["mean"]) == list(spec.mean) and json.loads(meta["std"]) == list(spec.std)
        assert meta["input"] == "1x32x32" and meta["num_classes"] == "10" and meta["dataset"] == "digits"


def test_two_exports_write_the_same_files(run, exported, tmp_path):
    from biasloss.export import export_int8

    again = export_int8(run / "best.pt", tmp_path / "model.onnx")
    assert Path(again["int8_path"]).read_bytes() == Path(exported["int8_path"]).read_bytes()
    assert Path(again["path"]).read_bytes() == Path(exported["path"]).read_bytes()
    same = ("top1_fp32", "top1_int8", "top1_drop", "bytes", "int8_bytes", "calibration")
    assert {k: again[k] for k in same} == {k: exported[k] for k in same}


def test_int8_below_max_drop_keeps_only_the_fp32_file(run, tmp_path, monkeypatch, capsys):
    import biasloss.deploy
    import biasloss.export as export

    def miscalibrated(fp32, int8, batches):  # activation ranges from images a tenth as bright: top-1 collapses
        biasloss.deploy.quantize_onnx(fp32, int8, [b * 0.1 for b in batches])

    monkeypatch.setattr(export, "quantize_onnx", miscalibrated)  # the public quantizer, where export calls it
    out = tmp_path / "model.onnx"
    (tmp_path / "model.int8.onnx").write_text("an earlier export's")  # must not outlive this one
    code = main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(out), "--int8", "--calibrate", "64"])
    assert code == 2
    *progress, err = capsys.readouterr().err.splitlines(keepends=True)  # the phases, then the error
    assert progress and all(line.startswith("biasloss export: ") for line in progress), progress
    match = re.fullmatch(r"biasloss: error: int8 top-1 (\d+\.\d\d) % is (\d+\.\d\d) points below fp32 "
                         r"(\d+\.\d\d) %, more than --max-drop 1\.0; kept the fp32 export "
                         rf"{re.escape(str(out))}\n", err)
    assert match, err
    int8, drop, fp32 = map(float, match.groups())
    assert drop > 1.0 and drop == pytest.approx(fp32 - int8, abs=0.011)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no int8 file, no temporary files
    meta = _metadata(out)
    assert float(meta["top1_fp32"]) >= 90.0 and "top1_int8" not in meta and "calibration" not in meta


def _state_dict_only(run, tmp_path) -> Path:
    path = tmp_path / "weights.pt"
    torch.save(torch.load(run / "best.pt", weights_only=True)["model"], path)
    return path


def _no_dataset(run, tmp_path) -> Path:
    ckpt = torch.load(run / "best.pt", weights_only=True)
    del ckpt["args"]["dataset"]
    path = tmp_path / "no-dataset.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("argv, message", [
    (["--int8", "--format", "torchscript", "--out", "{tmp}/model.ts"], "--int8 quantizes an ONNX or ExecuTorch export"),
    (["--int8", "--out", "{tmp}/model.pt"], "--int8 quantizes an ONNX or ExecuTorch export"),
    (["--int8", "--calibrate", "0"], "--calibrate must be a positive number of images, got 0"),
    (["--int8", "--calibrate", "-3"], "--calibrate must be a positive number of images, got -3"),
    (["--int8", "--max-drop", "-1"], "--max-drop must be a number of top-1 points >= 0"),
    (["--int8", "--max-drop", "nan"], "--max-drop must be a number of top-1 points >= 0"),
    (["--int8", "--static-batch"], "drop --static-batch"),
    (["--int8", "--image-size", "48"], "at the training resolution (32 px); drop --image-size 48"),
    (["--int8", "--calibration-dataset", "cifar10"],
     "calibration must come from the checkpoint's training set (digits), not cifar10"),
    (["--calibrate", "64", "--data-dir", "{tmp}"], "--calibrate, --data-dir only apply with --int8"),
    (["--int8", "--checkpoint", "{state_dict}"], "int8 export needs a checkpoint written by 'biasloss train'"),
    (["--int8", "--checkpoint", "{no_dataset}"], "int8 export needs a checkpoint written by 'biasloss train'"),
])
def test_errors_are_one_line(run, tmp_path, capsys, argv, message):
    paths = {"tmp": str(tmp_path), "state_dict": str(_state_dict_only(run, tmp_path)),
             "no_dataset": str(_no_dataset(run, tmp_path))}
    argv = ["--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "model.onnx"),
            *(a.format(**paths) for a in argv)]  # a later --checkpoint or --out wins
    before = set(tmp_path.iterdir())
    assert main(["export", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("biasloss: error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err + captured.out
    assert set(tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize("module, suffix", [("onnxruntime", "onnx"), ("onnx", "onnx"), ("onnxscript", "onnx"),
                                            ("executorch", "pte")])
def test_missing_runtime_is_one_line(module, suffix, tmp_path, monkeypatch, capsys):
    # runs whether the deploy extra is installed or not: the package and its loaded submodules are
    # made unimportable
    for name in [module, *(name for name in sys.modules if name.startswith(module + "."))]:
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / f"model.{suffix}"
    assert main(["export", "--checkpoint", str(tmp_path / "best.pt"), "--out", str(out), "--int8"]) == 2
    err = capsys.readouterr().err
    assert err == f"biasloss: error: int8 export needs {module}: pip install -e '.[deploy]' in the biasloss checkout\n"
    from biasloss.export import export_int8

    with pytest.raises(ImportError, match=r"pip install -e '\.\[deploy\]'"):
        export_int8(tmp_path / "best.pt", out)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# ExecuTorch (XNNPACK): the runtime that succeeds PyTorch Mobile, which the paper's Table 2 used
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_pte(run) -> dict:
    """``biasloss export --int8 --json --out model.pte`` of the trained run's best.pt: its result."""
    pytest.importorskip("executorch", reason="ExecuTorch export needs executorch (pip install -e '.[deploy]')")
    out = run.parent / "export-pte" / "model.pte"
    code, stdout = _export(["--checkpoint", str(run / "best.pt"), "--out", str(out), "--int8", "--json",
                            "--calibrate", "128"])
    assert code == 0
    return json.loads(stdout)


def _pte_top1_by_hand(path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 (%) of the ExecuTorch program, run image by image with ExecuTorch's own runtime API,
    on uint8 NHWC ``images`` preprocessed as its metadata file says."""
    from executorch.runtime import Runtime

    meta = json.loads(Path(str(path) + ".json").read_text())
    mean = np.float32(meta["mean"]).reshape(1, -1, 1, 1)  # lists in model.pte.json (strings in ONNX)
    std = np.float32(meta["std"]).reshape(1, -1, 1, 1)
    x = images.transpose(0, 3, 1, 2).astype(np.float32)
    x = (x - mean * np.float32(255)) * (np.float32(1) / (std * np.float32(255)))
    method = Runtime.get().load_program(str(path)).load_method("forward")
    predicted = [int(method.execute([torch.from_numpy(x[i: i + 1].copy())])[0].argmax()) for i in range(len(x))]
    return round(100.0 * float((np.array(predicted) == labels).mean()), 4)


def test_executorch_int8_is_close_to_fp32_and_what_its_runtime_gives(run, exported_pte):
    from biasloss.data import get_dataset_spec, load_arrays

    fp32, int8 = Path(exported_pte["path"]), Path(exported_pte["int8_path"])
    assert int8 == fp32.with_name("model.int8.pte") and int8.is_file()
    assert exported_pte["format"] == "executorch (xnnpack)" and exported_pte["input"] == [1, 1, 32, 32]
    assert exported_pte["checked"] and exported_pte["max_abs_diff"] < 1e-3  # fp32 program = PyTorch
    assert exported_pte["top1_fp32"] >= 90.0 and exported_pte["test_images"] == 360
    assert abs(exported_pte["top1_fp32"] - exported_pte["top1_int8"]) <= 2.0, exported_pte  # as for ONNX above
    data = load_arrays("digits")
    images, labels = data.test_images.numpy(), data.test_labels.numpy()
    assert _pte_top1_by_hand(fp32, images, labels) == exported_pte["top1_fp32"]
    assert _pte_top1_by_hand(int8, images, labels) == exported_pte["top1_int8"]
    assert exported_pte["int8_bytes"] < exported_pte["bytes"] / 2  # int8 weights
    spec = get_dataset_spec("digits")
    for path in (fp32, int8):  # the metadata beside each program
        meta = json.loads(Path(str(path) + ".json").read_text())
        assert float(meta["top1_fp32"]) == exported_pte["top1_fp32"] and float(meta["top1_int8"]) == exported_pte["top1_int8"]
        assert meta["calibration"] == "128 images of digits train (seed 0, evaluation transform)"
        assert "XNNPACK" in meta["quantization"] and meta["mean"] == list(spec.mean) and meta["std"] == list(spec.std)
        assert meta["input"] == [1, 32, 32] and meta["num_classes"] == 10  # numbers and lists, not strings
        assert meta["top1_fp32"] == exported_pte["top1_fp32"] and meta["top1_int8"] == exported_pte["top1_int8"]
