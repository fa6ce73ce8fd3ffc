"""Fine-tuning starts: load_pretrained and ``biasloss train --init``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biasloss.cli import main
from biasloss.models import create_model, load_pretrained, to_official_state_dict
from biasloss.train.checkpoint import load_checkpoint

pytest.importorskip("sklearn")


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model


def test_same_task_loads_everything(tmp_path):
    src = _randomised(create_model("skipblocknet_xs", num_classes=10))
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    model = create_model("skipblocknet_xs", num_classes=10)
    report = load_pretrained(model, path)
    assert not report.reinitialised and not report.adapted
    assert len(report.loaded) == len(src.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, src.state_dict()[key]), key


def test_other_classes_and_grayscale(tmp_path):
    src = _randomised(create_model("skipblocknet_xs", num_classes=1000))
    model = create_model("skipblocknet_xs", num_classes=101, in_chans=1)
    fresh_head = model.classifier.weight.detach().clone()
    report = load_pretrained(model, src.state_dict())
    assert sorted(report.reinitialised) == ["classifier.bias", "classifier.weight"]
    assert report.adapted == ["conv_stem.weight"]
    assert torch.equal(model.classifier.weight, fresh_head)
    # grayscale: the RGB filters summed (timm's adapt_input_conv)
    torch.testing.assert_close(model.conv_stem.weight, src.conv_stem.weight.sum(1, keepdim=True))
    for key, value in model.state_dict().items():
        if not key.startswith(("classifier.", "conv_stem.")):
            assert torch.equal(value, src.state_dict()[key]), key
    assert "freshly initialised" in report.summary() and "adapted" in report.summary()


def test_the_authors_checkpoint(tmp_path):
    src = _randomised(create_model("skipblocknet_m", num_classes=1000))
    path = tmp_path / "skipblocknet-m.pth"
    torch.save(to_official_state_dict(src), path)
    model = create_model("skipblocknet_m", num_classes=101)
    report = load_pretrained(model, path)
    assert sorted(report.reinitialised) == ["classifier.bias", "classifier.weight"]
    ours = src.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, ours[key]), key


def test_torchvision_and_timm_heads():
    src = _randomised(create_model("torchvision.mobilenet_v3_small", num_classes=1000))
    model = create_model("torchvision.mobilenet_v3_small", num_classes=7)
    assert sorted(load_pretrained(model, src.state_dict()).reinitialised) == [
        "classifier.3.bias", "classifier.3.weight"]
    src = _randomised(create_model("resnet10t", num_classes=1000))
    model = create_model("resnet10t", num_classes=7)
    assert sorted(load_pretrained(model, src.state_dict()).reinitialised) == ["fc.bias", "fc.weight"]


def test_another_architecture_is_a_clear_error(tmp_path):
    src = create_model("skipblocknet_s", num_classes=10)
    with pytest.raises(ValueError, match="does not hold weights of this architecture") as e:
        load_pretrained(create_model("skipblocknet_xs", num_classes=10), src.state_dict())
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not in the model"):
        load_pretrained(create_model("skipblocknet_xs", num_classes=10), {"foo.weight": torch.zeros(1)})
    with pytest.raises(TypeError):
        load_pretrained(create_model("skipblocknet_xs", num_classes=10), {"foo": 3})
    with pytest.raises(FileNotFoundError):
        load_pretrained(create_model("skipblocknet_xs", num_classes=10), tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*not a torch.save file"):
        load_pretrained(create_model("skipblocknet_xs", num_classes=10), bad)


FAST = ["--dataset", "digits", "--model", "skipblocknet_xs", "--batch-size", "32", "--limit", "128",
        "--no-progress", "--device", "cpu", "--epochs", "1"]


def test_train_init_from_a_run(tmp_path, capsys):
    assert main(["train", *FAST, "--out", str(tmp_path / "a")]) == 0
    source = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    # a tiny learning rate: the fine-tuned convolutions stay where the first run left them
    assert main(["train", *FAST, "--lr", "1e-12", "--init", str(tmp_path / "a" / "last.pt"),
                 "--out", str(tmp_path / "b")]) == 0
    assert "initialised with" in capsys.readouterr().out
    tuned = load_checkpoint(tmp_path / "b" / "last.pt")
    assert tuned["args"]["init"] == str(tmp_path / "a" / "last.pt")
    for key, value in tuned["model"].items():
        if key.endswith("weight") and value.dim() == 4:
            torch.testing.assert_close(value, source[key], rtol=0, atol=1e-6, msg=key)


def test_train_init_errors_are_one_line(tmp_path, capsys):
    assert main(["train", *FAST, "--init", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biasloss: error:") and "\n" not in err
    torch.save(create_model("skipblocknet_s", num_classes=10).state_dict(), tmp_path / "s.pt")
    assert main(["train", *FAST, "--init", str(tmp_path / "s.pt"), "--out", str(tmp_path / "d")]) == 2
    assert "does not hold weights of this architecture" in capsys.readouterr().err


def test_a_grayscale_classifier_into_an_rgb_model():
    # a Fashion-MNIST (1-channel) model's weights start an RGB model (the detection --init case):
    # a gray image repeated over R, G and B gives exactly the 1-channel model's output
    gray = _randomised(create_model("skipblocknet_xs", num_classes=10, in_chans=1)).eval()
    rgb = create_model("skipblocknet_xs", num_classes=10, in_chans=3)
    report = load_pretrained(rgb, gray.state_dict())
    assert report.adapted == ["conv_stem.weight"] and rgb.conv_stem.weight.shape[1] == 3
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(rgb.eval()(x.expand(-1, 3, -1, -1)), gray(x), rtol=1e-4, atol=1e-5)
