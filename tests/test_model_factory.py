"""create_model: our names, timm names, torchvision names; errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biasloss.models import SkipblockNet, create_model, is_model, list_models, register, unknown_model_error


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def test_list_models():
    assert list_models() == ["skipblocknet_l", "skipblocknet_m", "skipblocknet_s", "skipblocknet_xs"]


@pytest.mark.parametrize("name", ["skipblocknet_xs", "skipblocknet_m"])
def test_ours_with_small_input(name):
    model = create_model(name, num_classes=10, in_chans=1, small_input=True)
    assert isinstance(model, SkipblockNet) and model.small_input
    x = torch.randn(2, 1, 28, 28)  # Fashion-MNIST size
    assert _logits(model, x).shape == (2, 10)
    with torch.no_grad():
        assert model.forward_features(x).shape[-2:] == (4, 4)  # ceil(28 / 8)


def test_ours_kwargs_pass_through():
    model = create_model("skipblocknet_s", num_classes=3, drop_rate=0.5, bn_momentum=0.01)
    assert model.head_drop.p == 0.5
    assert all(m.momentum == 0.01 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_timm_name():
    model = create_model("resnet10t", num_classes=4, in_chans=1)
    assert _logits(model, torch.randn(1, 1, 64, 64)).shape == (1, 4)


@pytest.mark.parametrize(
    "name", ["torchvision.resnet18", "torchvision.mobilenet_v3_large", "torchvision.shufflenet_v2_x1_0"]
)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_torchvision_names(name, in_chans):
    model = create_model(name, num_classes=5, in_chans=in_chans)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == in_chans
    assert _logits(model, torch.randn(2, in_chans, 64, 64)).shape == (2, 5)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="skipblocknet_m") as e:
        create_model("skipblocknet_mm", num_classes=3)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="torchvision.resnet18"):
        create_model("torchvision.resnet19", num_classes=3)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("no_such_network_at_all_xyz", num_classes=3)


@pytest.mark.parametrize("name,known", [("skipblocknet_m", True), ("cifar_resnet18", True),
                                        ("mobilenetv3_large_100", True), ("torchvision.resnet18", True),
                                        ("torchvision.resnet19", False), ("skipblocknet_mm", False), ("", False),
                                        (None, False)])
def test_is_model(name, known):
    assert is_model(name) is known
    if not known and name:
        assert str(unknown_model_error(name)).startswith(f"unknown model {name!r}")


def test_small_input_only_for_ours():
    with pytest.raises(ValueError, match="small_input"):
        create_model("torchvision.resnet18", num_classes=3, small_input=True)
    with pytest.raises(ValueError, match="small_input"):
        create_model("resnet18", num_classes=3, small_input=True)


@pytest.mark.parametrize("kwargs", [dict(num_classes=0), dict(num_classes=3, in_chans=0), dict(num_classes="3")])
def test_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        create_model("skipblocknet_xs", **kwargs)


def test_register_extends_the_factory():
    calls = {}

    def tiny(num_classes, in_chans, small_input, **kwargs):
        calls.update(num_classes=num_classes, in_chans=in_chans, small_input=small_input, **kwargs)
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    register("tiny_test_net", tiny)
    try:
        assert "tiny_test_net" in list_models()
        create_model("tiny_test_net", num_classes=2, small_input=True, width=3)
        assert calls == dict(num_classes=2, in_chans=3, small_input=True, width=3)
    finally:
        from biasloss.models import factory

        factory._BUILDERS.pop("tiny_test_net")
    with pytest.raises(ValueError):
        register("torchvision.foo", tiny)
