"""The CIFAR-100 zoo: timm registration, the model contract, gradients, feature taps, sizes."""

from __future__ import annotations

import pytest
import timm
import torch

import biasloss.models.cifar as zoo
from biasloss.models.cifar import CIFAR100_MEAN, CIFAR100_STD, CifarResNet

# parameters at 100 classes, measured; docs/cifar_zoo.md sets them beside the paper's figures
EXPECTED_PARAMS = {
    "cifar_shufflenetv2": 1_356_104,
    "cifar_shufflenetv2_x0_5": 444_292,
    "cifar_mobilenetv2_075": 1_483_524,
    "cifar_squeezenet": 778_180,
    "cifar_densenet_k12": 7_084_852,
    "cifar_nasnet_a": 5_313_170,
    "cifar_resnet18": 11_220_132,
    "cifar_densenet121": 7_048_548,
}
NAMES = sorted(EXPECTED_PARAMS)
# the deepest graphs: a few seconds each for a first backward on 2 CPU cores
_HEAVY = {"cifar_densenet121", "cifar_densenet_k12", "cifar_nasnet_a"}
BACKWARD_PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in _HEAVY else n for n in NAMES]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_registered_name_is_tested() -> None:
    assert set(zoo.MODEL_NAMES) == set(EXPECTED_PARAMS)
    for name in NAMES:
        assert name.startswith("cifar_") and timm.is_model(name)
        assert name in timm.list_models("cifar_*")


@pytest.mark.parametrize("name", NAMES)
def test_contract_at_32px(name: str) -> None:
    model = timm.create_model(name, num_classes=100).eval()
    assert _num_params(model) == EXPECTED_PARAMS[name]
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == 100 and not cfg["url"]
    assert tuple(cfg["mean"]) == CIFAR100_MEAN and tuple(cfg["std"]) == CIFAR100_STD
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
        head = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
    last = model.feature_info[-1]
    assert feats.ndim == 4
    assert feats.shape == (2, model.num_features, 32 // last["reduction"], 32 // last["reduction"])
    assert last["num_chs"] == model.num_features
    assert logits.shape == (2, 100) and model.num_classes == 100
    torch.testing.assert_close(head, logits)
    assert pre.shape == (2, model.num_features)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", BACKWARD_PARAMS)
def test_backward_reaches_every_parameter(name: str) -> None:
    # 16 px (the models are fully convolutional) keeps the backward pass quick on CPU
    model = timm.create_model(name).train()
    logits = model.forward_head(model.forward_features(torch.randn(2, 3, 16, 16)))
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 7])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_reset_classifier(name: str) -> None:
    model = timm.create_model(name).eval()
    feats = torch.randn(2, model.num_features, 4, 4)
    model.reset_classifier(10)
    assert model.num_classes == 10 and model.get_classifier().out_features == 10
    assert model.forward_head(feats).shape == (2, 10)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    assert model.forward_head(feats).shape == (2, model.num_features)
    with pytest.raises(ValueError):
        model.reset_classifier(-1)


@pytest.mark.parametrize("name", NAMES)
def test_feature_info_matches_features_only(name: str) -> None:
    # one channel in: in_chans reaches the stem
    model = timm.create_model(name, in_chans=1)
    info = model.feature_info
    reductions = [f["reduction"] for f in info]
    assert reductions == sorted(set(reductions)) and reductions[0] == 1
    assert all(isinstance(model.get_submodule(f["module"]), torch.nn.Module) for f in info)

    extractor = timm.create_model(name, in_chans=1, features_only=True).eval()
    with torch.no_grad():
        maps = extractor(torch.randn(2, 1, 16, 16))
    assert [m.shape[1] for m in maps] == [f["num_chs"] for f in info]
    assert [m.shape[-1] for m in maps] == [16 // r for r in reductions]
    assert extractor.feature_info.channels() == [f["num_chs"] for f in info]


def test_bad_arguments_raise() -> None:
    for kwargs in (dict(num_classes=-1), dict(num_classes=2.5), dict(in_chans=0), dict(drop_rate=1.0)):
        with pytest.raises(ValueError):
            CifarResNet(**kwargs)
    with pytest.raises(ValueError):
        timm.create_model("cifar_resnet18", pretrained=True)


def test_drop_rate_reaches_the_head() -> None:
    model = timm.create_model("cifar_squeezenet", drop_rate=0.5)
    assert model.head.drop.p == 0.5
