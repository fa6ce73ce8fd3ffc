"""``biasloss export``: a trained checkpoint to ONNX / TorchScript, checked against PyTorch."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from biasloss.cli import main
from biasloss.data import get_dataset_spec
from biasloss.export import export_checkpoint
from biasloss.train.saved_run import load_run

pytest.importorskip("sklearn")
ort = pytest.importorskip("onnxruntime")

FAST = ["--dataset", "digits", "--batch-size", "32", "--limit", "128", "--no-progress", "--device", "cpu",
        "--epochs", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", *FAST, "--out", str(out)]) == 0
    return out


def _pytorch(ckpt_path, x):
    with torch.no_grad():
        return load_run(ckpt_path).model()(x)


def test_onnx_any_batch_matches_pytorch_and_carries_metadata(run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run / "last.pt"), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checked"] and result["max_abs_diff"] < 1e-4 and result["bn_fused"]
    assert result["input"] == ["batch", 1, 32, 32] and result["num_classes"] == 10
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 32, 32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), _pytorch(run / "last.pt", x), rtol=1e-4, atol=1e-5)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["dataset"] == "digits" and json.loads(meta["mean"]) == list(get_dataset_spec("digits").mean)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_torchscript_matches_pytorch(run, tmp_path):
    result = export_checkpoint(run / "last.pt", tmp_path / "m.pt")
    assert result["format"] == "torchscript (script)" and result["checked"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), _pytorch(run / "last.pt", x), rtol=1e-4, atol=1e-5)


def test_other_resolution_and_unfused(run, tmp_path):
    result = export_checkpoint(run / "last.pt", tmp_path / "m.onnx", image_size=48, fuse=False, dynamic_batch=False)
    assert result["input"] == [2, 1, 48, 48] and result["checked"] and not result["bn_fused"]


def test_errors_are_one_line(run, tmp_path, capsys):
    for argv, message in [
        (["--out", str(tmp_path / "m.bin")], "cannot tell the format"),
        (["--out", str(tmp_path / "m.onnx"), "--image-size", "4"], "--image-size"),
    ]:
        assert main(["export", "--checkpoint", str(run / "last.pt"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("biasloss: error:") and message in err and "\n" not in err
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    assert main(["export", "--checkpoint", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_torchscript_falls_back_to_tracing(run, tmp_path, monkeypatch):
    from biasloss.models import SkipblockNet

    script = torch.jit.script

    def refuse(obj, *args, **kwargs):  # as for a model whose Python TorchScript cannot compile
        if isinstance(obj, SkipblockNet):
            raise RuntimeError("not scriptable")
        return script(obj, *args, **kwargs)

    monkeypatch.setattr(torch.jit, "script", refuse)
    result = export_checkpoint(run / "last.pt", tmp_path / "m.pt")
    assert result["format"] == "torchscript (trace)" and result["checked"] and result["max_abs_diff"] < 1e-4


# --- issue 26: names, a suffix that contradicts --format, sizes beyond memory, SIGTERM, progress -----------


def test_onnx_input_is_images_and_output_logits(run, tmp_path):
    export_checkpoint(run / "last.pt", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert session.get_inputs()[0].shape[0] == "batch"  # the dynamic axis kept with the new name
    (logits,) = session.run(["logits"], {"images": torch.randn(3, 1, 32, 32).numpy()})
    assert logits.shape == (3, 10)


def test_format_that_contradicts_the_suffix_is_refused(run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run / "last.pt"), "--out", str(out), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biasloss: error:") and "\n" not in err
    assert "m.onnx" in err and "onnx" in err and "torchscript" in err and "--format" in err
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "refused" in capsys.readouterr().out


def test_image_size_beyond_memory_is_one_line(run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run / "last.pt"), "--out", str(out), "--image-size", "100000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biasloss: error: --image-size 100000") and "memory" in err and "\n" not in err
    assert not out.exists()


def test_sigterm_during_int8_export_cleans_up_and_exits_143(run, tmp_path):
    """The progress lines say which phase runs; SIGTERM in the middle of it removes the temporary
    files (as Ctrl-C does), prints one line and exits 143."""
    import os
    import signal
    import subprocess
    import sys

    for module in ("onnx", "onnxscript", "onnxruntime.quantization"):
        pytest.importorskip(module)
    out = tmp_path / "m.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "biasloss", "export", "--checkpoint", str(run / "last.pt"),
                             "--out", str(out), "--int8", "--calibrate", "32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "default"})
    try:
        seen = []
        for line in proc.stderr:  # the fp32 export has begun: its temporary file exists
            seen.append(line.rstrip("\n"))
            if line.startswith("biasloss export: exporting the fp32 model"):
                break
        assert any(p.name.startswith(".m.onnx.") and p.name.endswith(".tmp") for p in tmp_path.iterdir()), seen
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, (seen, rest)
    assert seen[0] == "biasloss export: reading 32 calibration images of digits train", seen
    assert all(line.startswith("biasloss export: ") for line in seen), seen  # no third-party noise
    assert rest.strip().splitlines() == [f"biasloss: export to {out} stopped by SIGTERM; its temporary files removed"]
    assert list(tmp_path.iterdir()) == []


def test_input_size_is_a_hidden_alias_of_image_size(run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run / "last.pt"), "--out", str(out), "--input-size", "4"]) == 2
    assert "--image-size must be an int >= 8, got 4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--input-size" not in capsys.readouterr().out


def _scripted_devices(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(path), map_location=None)
    return {t.device.type for t in [*scripted.parameters(), *scripted.buffers()]}


def test_device_cpu_exports_a_cpu_model(run, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", str(run / "last.pt"), "--out", str(out), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checked"]
    assert _scripted_devices(out) == {"cpu"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(run, tmp_path, capsys):
    """As 'train --device cuda' says it: one line, exit status 2, nothing written."""
    out = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", str(run / "last.pt"), "--out", str(out), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == "biasloss: error: --device cuda asked for, but CUDA is not available here"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_cuda_checks_on_the_gpu_and_exports_a_cpu_model(run, tmp_path):
    result = export_checkpoint(run / "last.pt", tmp_path / "m.pt", device="cuda")
    assert result["checked"] and result["max_abs_diff"] < 1e-3
    assert _scripted_devices(tmp_path / "m.pt") == {"cpu"}
