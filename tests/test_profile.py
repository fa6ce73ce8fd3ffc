"""``biasloss profile``: exact counts on hand-checkable layers, SkipblockNet-M against Table 1,
interleaved timing, and the command's JSON / markdown / error output."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from biasloss.analysis.profile import (
    count_macs,
    count_params,
    measure_latency,
    measure_throughput,
    paper_figures,
    profile_model,
)
from biasloss.cli import main

# ----------------------------------------------------------------------------- counts


def test_conv_macs_are_k_k_cin_cout_h_w():
    conv = nn.Conv2d(3, 8, 3, padding=1)  # bias is not a multiply-accumulate
    assert count_macs(conv, (3, 10, 10)) == 3 * 3 * 3 * 8 * 10 * 10
    assert count_macs(conv, 10) == 3 * 3 * 3 * 8 * 10 * 10  # square, 3 channels, batch 1
    assert count_macs(conv, (2, 3, 10, 10)) == 2 * 3 * 3 * 3 * 8 * 10 * 10  # the whole batch


def test_strided_depthwise_conv_macs():
    dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
    assert count_macs(dw, (8, 16, 16)) == 3 * 3 * 1 * 8 * 8 * 8


def test_linear_and_stack_macs():
    assert count_macs(nn.Linear(10, 5), torch.zeros(3, 10)) == 3 * 10 * 5
    net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    # BN, ReLU and pooling are free for torch.utils.flop_counter
    assert count_macs(net, (1, 6, 6)) == 1 * 4 * 36 + 4 * 2


def test_count_params_counts_shared_weights_once():
    conv = nn.Conv2d(3, 8, 3)
    assert count_params(conv) == 3 * 8 * 9 + 8
    shared = nn.Linear(4, 4)
    assert count_params(nn.Sequential(shared, nn.ReLU(), shared)) == 16 + 4


def test_count_macs_restores_training_mode_and_checks_types():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    net[1].eval()
    count_macs(net, 8)
    assert net.training and not net[1].training
    with pytest.raises(TypeError):
        count_macs("not a model", 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        count_macs(net, (0, 3, 8, 8))


def test_skipblocknet_m_matches_table1():
    r = profile_model("skipblocknet_m", latency=False)
    assert abs(r["params"] - 5.5e6) <= 0.05e6  # paper: 5.5M
    # Paper: 246M MACs (fvcore: 247.8M); torch.utils.flop_counter counts convolutions and linear
    # layers only and gives 236.6M for the authors' layout.
    assert 230e6 <= r["macs"] <= 250e6
    assert abs(r["macs"] - 236.6e6) < 0.1e6
    # fvcore's convention (BatchNorm and pooling counted too) gives 247.8M, within 1 % of 246M
    assert abs(r["macs_fvcore"] - 247.8e6) < 0.1e6
    assert r["latency_ms"] is None and r["paper"]["name"] == "SkipblockNet-M"
    assert r["paper"]["macs"] == 246_000_000 and r["paper"]["pixel4_ms"] == 27
    assert "flop_counter" in r["setup"]["mac_counter"]


def test_fvcore_convention_adds_batchnorm_and_pooling():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1))
    conv = 3 * 3 * 3 * 4 * 6 * 6
    assert count_macs(net, 8) == conv
    assert count_macs(net, 8, convention="fvcore") == conv + 2 * 4 * 36 + 4 * 36
    with pytest.raises(ValueError, match="convention"):
        count_macs(net, 8, convention="ptflops")


def test_paper_lookup():
    assert paper_figures("torchvision.mobilenet_v3_large").params == 5_400_000
    assert paper_figures("mobilenetv3_large_100").name == "MobileNetV3 Large 1.0x"
    assert paper_figures("torchvision.mobilenet_v2").top1 == 71.8  # Table 2 only
    assert paper_figures("resnet50") is None


# ----------------------------------------------------------------------------- timing


class _Recorder(nn.Module):
    def __init__(self, name: str, log: list[str]):
        super().__init__()
        self.name, self.log = name, log
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        self.log.append(self.name)
        return self.lin(x)


def test_latency_is_interleaved_and_restores_threads():
    log: list[str] = []
    models = {"a": _Recorder("a", log), "b": _Recorder("b", log)}
    threads = torch.get_num_threads()
    stats = measure_latency(models, torch.zeros(1, 4), reps=4, warmup=0, threads=1)
    assert log == ["a", "b", "b", "a", "a", "b", "b", "a"]  # one of each per round, order rotating
    assert torch.get_num_threads() == threads
    for s in stats.values():
        assert s["reps"] == 4 and s["threads"] == 1
        assert 0 < s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
        assert s["iqr"] == pytest.approx(s["q3"] - s["q1"])
    assert all(m.training for m in models.values())  # modes restored


def test_throughput_reports_images_per_second():
    out = measure_throughput({"lin": nn.Linear(4, 2)}, torch.zeros(8, 4), reps=2, warmup=1)
    assert out["lin"]["batch"] == 8 and out["lin"]["img_per_s"] > 0
    with pytest.raises(ValueError):
        measure_latency({"lin": nn.Linear(4, 2)}, torch.zeros(1, 4), reps=0)


# ----------------------------------------------------------------------------- the command

FAST = ["--input-size", "32", "--reps", "2", "--warmup", "1", "--batch", "2", "--throughput-reps", "1"]


def test_cli_json_one_model(capsys):
    assert main(["profile", "skipblocknet_xs", *FAST, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["model"] == "skipblocknet_xs"
    # the model the command profiles, counted directly: torch's parameter sizes, and count_macs
    # (checked by hand above) at the --input-size of 32 px
    from biasloss.models import create_model

    model = create_model("skipblocknet_xs", num_classes=1000)
    assert r["params"] == sum(p.numel() for p in model.parameters())
    assert r["macs"] == count_macs(model, (3, 32, 32))
    assert r["latency_ms"] > 0 and r["latency"]["reps"] == 2 and r["latency"]["threads"] == 1
    assert r["throughput_img_s"] > 0 and r["setup"]["input_shape"] == [1, 3, 32, 32]


def test_cli_json_several_models_is_a_list(capsys):
    assert main(["profile", "skipblocknet_xs", "torchvision.mobilenet_v3_small", "--input-size", "64",
                 "--num-classes", "10", "--no-latency", "--json"]) == 0
    rs = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rs] == ["skipblocknet_xs", "torchvision.mobilenet_v3_small"]
    assert all(r["latency_ms"] is None for r in rs)


def test_cli_compare_has_the_paper_columns(capsys):
    assert main(["profile", "skipblocknet_m", "--input-size", "64", "--no-latency", "--compare"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "params (paper)" in header and "MACs (paper)" in header and "latency" in header
    row = next(line for line in out.splitlines() if line.startswith("| skipblocknet_m"))
    assert "| 5.53M | 5.5M |" in row and "| 246M |" in row and "| 27 / 42 |" in row
    assert "torch.utils.flop_counter: convolutions and linear layers" in out
    assert "224 x 224" in out  # says the paper's figures are at another size


def test_cli_plain_output(capsys):
    assert main(["profile", "skipblocknet_xs", *FAST, "--no-throughput"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("skipblocknet_xs: ") and "MACs" in out and "latency" in out


@pytest.mark.parametrize("argv", [
    ["profile", "no_such_model", "--no-latency"],
    ["profile", "skipblocknet_xs", "--reps", "0"],
    ["profile", "skipblocknet_xs", "--input-size", "-3", "--no-latency"],
    ["profile", "skipblocknet_xs", "skipblocknet_xs", "--no-latency"],
])
def test_cli_bad_input_exits_2_with_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("biasloss: error: ") and err.count("\n") == 1


def test_cli_batch_size_and_image_size_are_the_names_the_old_ones_hidden_aliases(capsys):
    """Issue 26 (10): --batch-size and --image-size as in train/eval/export; --batch and --input-size still parse."""
    new = ["--image-size", "32", "--reps", "2", "--warmup", "1", "--batch-size", "3", "--throughput-reps", "1"]
    assert main(["profile", "skipblocknet_xs", *new, "--json"]) == 0
    assert main(["profile", "skipblocknet_xs", *FAST, "--json"]) == 0
    by_new, by_old = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert by_new["setup"]["input_shape"] == by_old["setup"]["input_shape"] == [1, 3, 32, 32]
    assert by_new["throughput"]["batch"] == 3 and by_old["throughput"]["batch"] == 2
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    text = capsys.readouterr().out
    assert "--batch-size" in text and "--image-size" in text
    assert "--batch " not in text and "--batch\n" not in text and "--input-size" not in text
