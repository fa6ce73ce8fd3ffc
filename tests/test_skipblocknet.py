"""SkipblockNet: layout, every registered variant, any resolution, timm contract."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import randomise_bn
from torch import nn

import biasloss.models  # noqa: F401  (registers the variants with timm)
from biasloss.models import (
    SKIPBLOCKNET_ARCH,
    BlockDef,
    SkipblockNet,
    SkipblockNetCfg,
    skipblocknet_l,
    skipblocknet_m,
    skipblocknet_s,
    skipblocknet_xs,
)

VARIANTS = ["skipblocknet_xs", "skipblocknet_s", "skipblocknet_m", "skipblocknet_l"]


def test_registered_with_timm():
    assert sorted(timm.list_models("skipblocknet*")) == sorted(VARIANTS)


def test_import_biasloss_registers_with_timm():
    # a fresh interpreter: "import biasloss" alone must make the names known to timm
    code = (
        "import biasloss, timm; m = timm.create_model('skipblocknet_m', num_classes=10); "
        "assert m.num_classes == 10"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_backward_every_parameter(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 7)
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", VARIANTS)
def test_small_input_grayscale(name):
    model = timm.create_model(name, num_classes=10, in_chans=1, small_input=True).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
    assert feats.shape == (2, model.num_features, 4, 4)  # total stride 8
    assert logits.shape == (2, 10)
    assert model.conv_stem.in_channels == 1


@pytest.mark.parametrize("name", VARIANTS)
def test_reset_classifier(name):
    model = timm.create_model(name, num_classes=5).eval()
    assert model.get_classifier().out_features == 5
    model.reset_classifier(3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (1, 3)
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity)
        assert model(x).shape == (1, model.head_hidden_size)
        feats = model.forward_features(x)
        assert torch.equal(model.forward_head(feats, pre_logits=True), model(x))
    with pytest.raises(ValueError):
        model.reset_classifier(-1)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("small_input,size", [(False, 64), (True, 32)])
def test_feature_info_matches_features_only(name, small_input, size):
    model = timm.create_model(name, features_only=True, small_input=small_input).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        feats = model(x)
    assert len(feats) == len(model.feature_info.channels()) == 5
    for f, chs, red in zip(feats, model.feature_info.channels(), model.feature_info.reduction()):
        assert f.shape[1] == chs
        assert f.shape[-1] == size // red
    full = timm.create_model(name, small_input=small_input)
    assert [i["num_chs"] for i in full.feature_info] == model.feature_info.channels()
    expected = [1, 1, 2, 4, 8] if small_input else [2, 4, 8, 16, 32]
    assert model.feature_info.reduction() == expected


def test_features_only_out_indices_prunes():
    model = timm.create_model("skipblocknet_m", features_only=True, out_indices=(1, 2)).eval()
    full = skipblocknet_m()
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters()) / 10
    with torch.no_grad():
        a, b = model(torch.randn(1, 3, 64, 64))
    assert a.shape == (1, 24, 16, 16) and b.shape == (1, 40, 8, 8)


def test_forward_intermediates():
    model = randomise_bn(skipblocknet_s()).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x))
        assert [t.shape[1] for t in inter] == [i["num_chs"] for i in model.feature_info]
        assert torch.equal(inter[-1], final)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape[1] for t in last2] == [i["num_chs"] for i in model.feature_info[-2:]]
        early = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True, stop_early=True)
        assert torch.equal(early[1], inter[1])
    with pytest.raises(ValueError):
        model.forward_intermediates(x, stop_early=True)


@pytest.mark.parametrize("name,params", [("skipblocknet_xs", 2_328_680), ("skipblocknet_s", 3_686_480),
                                         ("skipblocknet_m", 5_532_352), ("skipblocknet_l", 7_134_360)])
def test_parameter_counts_documented(name, params):
    # docs/skipblocknet.md, "The variants against Table 1"
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params


def test_m_at_224():
    model = skipblocknet_m().eval()
    assert sum(p.numel() for p in model.parameters()) == 5_532_352
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, 960, 7, 7)
        assert model.forward_head(feats).shape == (1, 1000)
    assert model.num_features == 960 and model.head_hidden_size == 1280


def test_m_layout_is_the_authors():
    model = skipblocknet_m()
    blocks = [b for st in model.stages for b in st.blocks]
    assert len(blocks) == 15
    assert [b.conv_pw.out_channels for b in blocks] == [
        16, 64, 72, 72, 120, 240, 240, 200, 184, 184, 480, 672, 672, 960, 960]
    assert [b.conv_dw.kernel_size[0] for b in blocks] == [3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5]
    assert [b.conv_dw.stride[0] for b in blocks] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1]
    assert [b.conv_pwl.out_channels for b in blocks] == [
        16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160]
    se = [b.se.conv_reduce.out_channels if hasattr(b.se, "conv_reduce") else 0 for b in blocks]
    assert se == [0, 0, 0, 24, 32, 64, 0, 0, 0, 0, 120, 168, 168, 240, 240]
    assert [type(b.bn1.act).__name__ for b in blocks] == ["Hardswish"] + ["ReLU"] * 4 + ["Hardswish"] * 10
    skip1, skip2 = model.stages[2].skip, model.stages[3].skip
    assert (skip1.conv_pw.in_channels, skip1.conv_pw.out_channels, skip1.conv_dw.kernel_size[0],
            skip1.conv_pwl.out_channels) == (16, 96, 5, 40)
    assert (skip2.conv_pw.in_channels, skip2.conv_pw.out_channels, skip2.conv_dw.kernel_size[0],
            skip2.conv_pwl.out_channels) == (16, 40, 3, 80)
    assert model.stages[2].skip_src == model.stages[3].skip_src == 0


@pytest.mark.parametrize("builder,width", [(skipblocknet_xs, 0.5), (skipblocknet_s, 0.7),
                                           (skipblocknet_m, 1.0), (skipblocknet_l, 1.15)])
def test_width_applies_to_every_layer(builder, width):
    model = builder()
    assert model.cfg.width == width
    stem = model.conv_stem.out_channels
    assert stem == timm.layers.make_divisible(16 * width, 8)
    for i in (2, 3):
        skip = model.stages[i].skip
        assert skip.conv_pw.in_channels == stem  # the skip reads the (scaled) base block
        assert skip.conv_pwl.out_channels == model.stages[i].blocks[-1].conv_pwl.out_channels


@pytest.mark.parametrize("size", [(64, 64), (97, 97), (80, 120), (33, 45), (224, 160)])
def test_any_resolution(size):
    model = skipblocknet_xs(num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 4)


def test_skip_blocks_pool_as_adaptive_average_pooling():
    # a skip block pools the early map to the size of the one it joins, exactly as adaptive average
    # pooling would (given that map already pooled, it pools no further), whether the sizes divide
    model = randomise_bn(skipblocknet_xs(num_classes=4)).eval()
    calls = []
    handles = [m.register_forward_hook(lambda module, args, out: calls.append((module, *args, out)))
               for name, m in model.named_modules() if name.endswith(".skip")]
    with torch.no_grad():
        for size in [(64, 64), (33, 45)]:
            model(torch.randn(1, 3, *size))
        for handle in handles:
            handle.remove()
        assert len(calls) == 2 * 2
        divides = set()
        for module, source, ref, out in calls:
            (h, w), (in_h, in_w) = ref.shape[-2:], source.shape[-2:]
            divides.add(in_h % h == 0 and in_w % w == 0)
            expected = module(F.adaptive_avg_pool2d(source, (h, w)), ref)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert divides == {True, False}  # both ways of pooling were taken


def test_unpooled_head_applies_at_every_position():
    # global_pool="": timm's MobileNetV3 convention, the hidden layer (and classifier) per position
    model = randomise_bn(skipblocknet_xs(num_classes=5, global_pool="")).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        dense = model(x)
        hidden = model.forward_head(feats, pre_logits=True)
        assert dense.shape == (2, 5, 3, 3) and hidden.shape == (2, 1024, 3, 3)
        at = feats[:, :, 1, 2]  # one position, by hand: Linear, hard-swish, Linear
        expected = model.classifier(F.hardswish(model.head_fc(at)))
        torch.testing.assert_close(dense[:, :, 1, 2], expected, rtol=1e-5, atol=1e-5)
        model.reset_classifier(5, "avg")
        pooled = model.classifier(F.hardswish(model.head_fc(feats.mean((2, 3)))))
        torch.testing.assert_close(model(x), pooled, rtol=1e-5, atol=1e-5)


def test_pretrained_cfg():
    model = timm.create_model("skipblocknet_m")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bilinear"
    assert cfg["num_classes"] == 1000 and cfg["classifier"] == "classifier"
    assert not cfg.get("url") and not cfg.get("hf_hub_id")
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["crop_pct"] == 0.875


def test_kwargs_bn_momentum_drop_rate_norm_layer():
    model = skipblocknet_xs(bn_momentum=0.01, drop_rate=0.3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 0.01 and m.eps == 1e-5 for m in bns)
    assert model.head_drop.p == 0.3
    model = skipblocknet_xs(norm_layer=lambda c: nn.GroupNorm(1, c))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ValueError):
        skipblocknet_xs(drop_rate=1.5)
    with pytest.raises(ValueError):
        skipblocknet_xs(global_pool="nope")


def test_init_follows_the_authors():
    torch.manual_seed(0)
    model = skipblocknet_m()
    conv = model.stages[5].blocks[1].conv_pw  # 160 -> 960, 1x1
    assert abs(conv.weight.std().item() - math.sqrt(2.0 / 960)) < 0.1 * math.sqrt(2.0 / 960)
    se = model.stages[5].blocks[1].se.conv_reduce  # a Linear in the authors' code
    assert abs(se.weight.std().item() - 0.01) < 0.001 and se.bias.abs().max() == 0
    assert abs(model.head_fc.weight.std().item() - 0.01) < 0.001
    bn = model.stages[5].blocks[1].bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and bn.bias.abs().max() == 0


@pytest.mark.parametrize("coarse", [False, True])
def test_group_matcher(coarse):
    from timm.models import group_parameters

    model = skipblocknet_m()
    groups = group_parameters(model, model.group_matcher(coarse=coarse))
    grouped = [n for names in groups.values() for n in names]
    head = {n for n, _ in model.named_parameters() if n.startswith(("head_fc", "classifier"))}
    assert sorted(grouped) == sorted(n for n, _ in model.named_parameters())
    # stem, the stages (coarse) or the 15 blocks, the head; skip blocks and the head conv join the
    # group before them (timm's MATCH_PREV_GROUP)
    assert len(groups) == (8 if coarse else 17)
    assert set(list(groups.values())[-1]) == head


def test_grad_checkpointing():
    model = skipblocknet_xs(num_classes=3).train()
    model.set_grad_checkpointing(True)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_architecture_table_validation():
    ir = BlockDef("ir", 3, 1, 16)
    with pytest.raises(ValueError, match="earlier stage"):
        SkipblockNet(SkipblockNetCfg(stages=((ir, BlockDef("skip", 3, 2, src=0)),)))
    with pytest.raises(ValueError, match="last row"):
        SkipblockNet(SkipblockNetCfg(stages=((ir,), (ir, BlockDef("skip", 3, 2, src=0), ir))))
    with pytest.raises(ValueError, match="kind"):
        SkipblockNet(SkipblockNetCfg(stages=((BlockDef("conv", 3, 1, 16),),)))
    with pytest.raises(ValueError, match="width"):
        SkipblockNet(width=0)
    # a custom table: one skip from stage 0 into stage 2
    table = ((ir,), (BlockDef("ir", 3, 4, 24, stride=2),),
             (BlockDef("ir", 5, 3, 40, stride=2, se=True), BlockDef("skip", 3, 2, src=0)))
    model = SkipblockNet(SkipblockNetCfg(stages=table), num_classes=2).eval()
    assert model.stages[2].skip is not None and len(model.feature_info) == 3
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)
    assert SKIPBLOCKNET_ARCH[2][-1].kind == "skip" and SKIPBLOCKNET_ARCH[3][-1].kind == "skip"


def test_state_dict_keys_are_stable():
    keys = list(skipblocknet_m().state_dict())
    assert keys[:2] == ["conv_stem.weight", "bn1.weight"]
    assert "stages.0.blocks.0.conv_pw.weight" in keys
    assert "stages.2.blocks.2.se.conv_reduce.weight" in keys
    assert "stages.2.skip.conv_dw.weight" in keys and "stages.3.skip.bn3.running_var" in keys
    assert keys[-4:] == ["head_fc.weight", "head_fc.bias", "classifier.weight", "classifier.bias"]
    assert "conv_head.weight" in keys and "bn2.num_batches_tracked" in keys


def test_batchnorm_act_is_batchnorm_then_activation():
    torch.manual_seed(0)
    fused = skipblocknet_xs(bn_eps=1e-3, bn_momentum=0.01).bn1  # the stem's BatchNorm and hard-swish, one module
    assert isinstance(fused.act, nn.Hardswish)
    plain = nn.BatchNorm2d(fused.num_features, eps=1e-3, momentum=0.01)
    assert list(fused.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, fused.num_features, 5, 5)
    for training in (True, True, False):  # two steps update the running statistics alike
        fused.train(training), plain.train(training)
        torch.testing.assert_close(fused(x.clone()), F.hardswish(plain(x.clone())), rtol=0, atol=0)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[key], value, rtol=0, atol=0)
    assert fused.num_batches_tracked.item() == 2
    with pytest.raises(ValueError, match="momentum"):
        skipblocknet_xs(bn_momentum=None)


def test_timm_transform_of_a_grey_model_takes_a_grey_image():
    """timm's data config of a one-channel model normalises one channel (issue 26, point 3)."""
    timm = pytest.importorskip("timm")
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("skipblocknet_xs", in_chans=1, small_input=True).eval()
    config = resolve_data_config({}, model=model)
    assert config["input_size"] == (1, 32, 32) and len(config["mean"]) == len(config["std"]) == 1
    x = create_transform(**config)(Image.new("L", (40, 40), 128))
    assert x.shape == (1, 32, 32) and model(x[None]).shape == (1, 1000)
    assert resolve_data_config({}, model=timm.create_model("skipblocknet_xs"))["mean"] == (0.485, 0.456, 0.406)
