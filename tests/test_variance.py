"""``biasloss variance``: hand-computed variances, forward-order layer counting, the CLI."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from torch import nn

from biasloss import bias_weights, feature_variance
from biasloss.analysis.variance import (
    PAPER_TABLE5,
    collect_variance,
    conv_layers,
    format_table,
    layer_variance_stats,
)
from biasloss.cli import main


class Reversed(nn.Module):
    """``n`` 1x1 single-channel convs registered as ``convs.0 .. convs.{n-1}`` but run in reverse
    order, with a ``shared`` conv run twice in the middle: forward order != registration order."""

    def __init__(self, n: int = 22, scale: float = 1.1) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(1, 1, 1, bias=False) for _ in range(n))
        for conv in self.convs:
            nn.init.constant_(conv.weight, scale)
        self.shared = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.constant_(self.shared.weight, 1.0)
        self.unused = nn.Conv2d(1, 1, 1)
        self.head = nn.Linear(1, 3)

    def forward(self, x):
        for i, conv in enumerate(reversed(self.convs)):
            x = conv(x)
            if i == 1:
                x = self.shared(self.shared(x))  # counted once, measured at its first call
        return self.head(x.mean((2, 3)))


def _loader(*batches):
    return [(b, torch.zeros(b.shape[0], dtype=torch.long)) for b in batches]


def test_variance_of_a_fixed_conv_on_constant_inputs():
    # channel 0 = c, channel 1 = 2c over 2x2 pixels: 8 values, half c, half 2c:
    # population variance (c/2)^2, unbiased 8/7 of it = 2c^2/7
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
    model = nn.Sequential(conv)
    x = torch.stack([torch.full((1, 2, 2), c) for c in (1.0, 2.0, 3.0)])
    stats = layer_variance_stats(model, _loader(x[:2], x[2:]), layers=["last"])
    assert list(stats) == ["0"]
    s = stats["0"]
    assert s["avg"] == pytest.approx((2 + 8 + 18) / 21)
    assert s["max"] == pytest.approx(18 / 7) and s["min"] == pytest.approx(2 / 7)
    assert set(s) == {"avg", "max", "min"}


def test_layers_are_counted_in_forward_order():
    model = Reversed()
    x = torch.randn(4, 1, 3, 3)
    order = conv_layers(model, x)
    # convs.21, convs.20, shared (once), convs.19, ..., convs.0; the unused conv never runs
    assert order[:4] == ["convs.21", "convs.20", "shared", "convs.19"]
    assert order[-1] == "convs.0" and len(order) == 23 and "unused" not in order
    assert model.training  # the probe left the mode alone
    stats = layer_variance_stats(model, _loader(x[:3], x[3:]), layers=(5, 20, "last"))
    assert list(stats) == ["convs.18", "convs.3", "convs.0"]
    base = feature_variance(x)
    # the 5th conv to run has 4 scaling convs (1.1 each) and the identity `shared` before or at it
    for name, k in (("convs.18", 4), ("convs.3", 19), ("convs.0", 22)):
        expected = base * 1.1 ** (2 * k)
        assert stats[name]["avg"] == pytest.approx(expected.mean().item(), rel=1e-5)
        assert stats[name]["max"] == pytest.approx(expected.max().item(), rel=1e-5)
        assert stats[name]["min"] == pytest.approx(expected.min().item(), rel=1e-5)


def test_module_names_duplicates_and_shared_modules():
    model = Reversed()
    x = torch.randn(2, 1, 3, 3)
    stats = layer_variance_stats(model, _loader(x), layers=["shared", "23", "last", "convs.0"])
    assert list(stats) == ["shared", "convs.0"]  # 23rd == last == convs.0: measured once
    # `shared` at its first call: after two 1.1 convs
    assert stats["shared"]["avg"] == pytest.approx((feature_variance(x) * 1.1**4).mean().item(), rel=1e-5)
    result = collect_variance(model, _loader(x), ["convs.20", 3])
    assert [s.label for s in result.layers] == ["convs.20 (2nd conv)", "3rd conv"]
    assert result.num_convs == 23 and result.samples == 2 and result.batches == 1


@pytest.mark.parametrize(
    "layers, needle",
    [([0], "layer index 0 out of range"), ([24], "layer index 24 out of range"),
     (["convs.99"], "unknown layer 'convs.99'"), (["unused"], "did not run"), ([], "empty")],
)
def test_layer_errors(layers, needle):
    with pytest.raises(ValueError, match=needle):
        layer_variance_stats(Reversed(), _loader(torch.randn(2, 1, 3, 3)), layers=layers)


def test_empty_loader_and_non_module():
    with pytest.raises(ValueError, match="empty"):
        layer_variance_stats(Reversed(), [])
    with pytest.raises(TypeError):
        layer_variance_stats(lambda x: x, _loader(torch.randn(2, 1, 3, 3)))


class TimmLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward_features(self, x):
        return torch.relu(self.conv(x))

    def forward_head(self, x):
        return self.fc(x.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_bias_weights_are_scaled_per_evaluation_batch():
    torch.manual_seed(0)
    model = TimmLike()
    batches = [torch.randn(5, 1, 6, 6) * s for s in (1.0, 3.0)]
    result = collect_variance(model, _loader(*batches), ["last"], weights=True)
    assert result.per_sample.shape == (10,) and result.weights.shape == (10,)
    with torch.no_grad():
        expected = torch.cat([bias_weights(model.forward_features(b)) for b in batches])
    torch.testing.assert_close(result.weights, expected)
    # each batch is scaled on its own: both hold the extremes 0.7 and exp(0.3) - 0.3
    for half in (result.weights[:5], result.weights[5:]):
        assert half.min().item() == pytest.approx(0.7) and half.max().item() == pytest.approx(math.exp(0.3) - 0.3)
    # a model without forward_features gets a FeatureTap
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    result = collect_variance(plain, _loader(*batches), [1], weights=True)
    assert result.weights.shape == (10,) and result.feature_shape[0] == 4
    assert not plain[1]._forward_hooks and not plain[0]._forward_hooks  # hooks removed


def test_table_has_paper_rows_for_the_default_layers():
    result = collect_variance(Reversed(), _loader(torch.randn(4, 1, 3, 3)))
    md = format_table(result, "ours: toy")
    lines = md.splitlines()
    assert lines[0] == "| model | 5th conv | 20th conv | last conv (23rd) |"
    assert lines[2].startswith("| ours: toy | ")
    assert lines[3] == "| paper: SkipblockNet-M (CE) | 1.7 / 2.4 / 1.6 | 0.6 / 1.2 / 0.1 | 0.09 / 0.2 / 0.04 |"
    assert sum(line.startswith("| paper:") for line in lines) == len(PAPER_TABLE5)
    other = format_table(collect_variance(Reversed(), _loader(torch.randn(4, 1, 3, 3)), ["shared"]), "ours")
    assert "Paper, Table 5" in other and "`shared`" in other


# ---------------------------------------------------------------------------------------------
# The command, on a checkpoint built here (no training)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("sklearn")
    from biasloss.data import get_dataset_spec
    from biasloss.train.checkpoint import save_checkpoint
    from biasloss.train.runner import build_model

    torch.manual_seed(0)
    model = build_model(argparse.Namespace(model="skipblocknet_xs"), get_dataset_spec("digits"))
    args = {"dataset": "digits", "model": "skipblocknet_xs", "loss": "bias", "seed": 0, "limit": 64,
            "batch_size": 32, "alpha": 0.3, "beta": 0.3, "data_dir": None, "channels_last": True}
    state = {"model": model.state_dict(), "ema": None, "eval_weights": "model", "optimizer": {}, "scheduler": {},
             "loss": {}, "epoch": 1, "metrics": None, "args": args, "recipe": {"batch_size": 32}}
    return save_checkpoint(state, tmp_path_factory.mktemp("ckpt") / "last.pt")


def test_cli_table(checkpoint, capsys):
    assert main(["variance", "--checkpoint", str(checkpoint), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| ours: skipblocknet_xs (bias, epoch 1) |" in out
    assert "| paper: MobileNetV3 1.0x (bias) | 1.9 / 2.4 / 1.9 |" in out
    assert "64 images of the digits test split" in out and "`conv_head`" in out


def test_cli_json_and_histogram(checkpoint, tmp_path, capsys):
    png = tmp_path / "hist.png"
    assert main(["variance", "--checkpoint", str(checkpoint), "--device", "cpu", "--json", "--limit", "40",
                 "--layers", "1", "5", "last", "stages.1", "--hist", str(png)]) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out)
    assert list(stats) == ["conv_stem", "stages.1.blocks.0.conv_pw", "conv_head", "stages.1"]
    for s in stats.values():
        assert set(s) == {"avg", "max", "min"} and 0 <= s["min"] <= s["avg"] <= s["max"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in captured.err


def test_cli_histogram_weighs_as_the_run_did(checkpoint, tmp_path, monkeypatch):
    """The run's own alpha, beta and clamp: a clamp of [0.8, 1.0] bounds every weight drawn."""
    from biasloss.analysis import variance

    state = torch.load(checkpoint, weights_only=False)
    state["args"].update(alpha=0.5, beta=0.3, clamp=[0.8, 1.0])
    torch.save(state, tmp_path / "clamped.pt")
    drawn = {}
    monkeypatch.setattr(variance, "plot_histograms", lambda result, out, **kw: drawn.update(kw, result=result) or out)
    assert main(["variance", "--checkpoint", str(tmp_path / "clamped.pt"), "--device", "cpu", "--limit", "40",
                 "--hist", str(tmp_path / "h.png")]) == 0
    assert (drawn["alpha"], drawn["beta"], drawn["clamp"]) == (0.5, 0.3, (0.8, 1.0))
    weights = drawn["result"].weights
    assert weights.min() >= 0.8 and weights.max() <= 1.0 and (weights == 0.8).any()  # was: down to 0.7


def test_cli_random_model(tmp_path, capsys):
    pytest.importorskip("sklearn")
    assert main(["variance", "--model", "skipblocknet_xs", "--dataset", "digits", "--limit", "16",
                 "--device", "cpu", "--json", "--layers", "2"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["stages.0.blocks.0.conv_pw"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--layers", "500"], "layer index 500 out of range"),
        (["--layers", "conv_haed"], "unknown layer 'conv_haed'"),
        (["--hist", "hist.txt"], "--hist must end in"),
        (["--limit", "0"], "--limit must be positive"),
        (["--model", "skipblocknet_xs"], "not both"),
        (["--dataset", "cifar100"], "cannot be evaluated on cifar100"),
    ],
)
def test_cli_errors(checkpoint, capsys, extra, needle):
    code = main(["variance", "--checkpoint", str(checkpoint), "--device", "cpu", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("biasloss: error: ") and needle in err, err


def test_cli_missing_checkpoint_and_no_source(tmp_path, capsys):
    assert main(["variance", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint not found" in err
    assert main(["variance"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "give --checkpoint" in err
