"""FeatureTap and forward_with_features on torchvision and timm models (CPU, tiny inputs)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm

from biasloss.features import FeatureTap, forward_with_features

PROBE = (3, 64, 64)


def _x(batch: int = 2, size: int = 64, chans: int = 3) -> torch.Tensor:
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "name, layer, shape",
    [
        ("resnet18", "layer4", (2, 512, 2, 2)),
        ("mobilenet_v3_small", "features", (2, 576, 2, 2)),
        ("shufflenet_v2_x0_5", "conv5", (2, 1024, 2, 2)),
        ("densenet121", "features", (2, 1024, 2, 2)),
        ("squeezenet1_1", "features", (2, 512, 3, 3)),
        ("efficientnet_b0", "features", (2, 1280, 2, 2)),
    ],
)
def test_finds_last_feature_map_of_torchvision_models(name, layer, shape):
    model = getattr(tvm, name)(weights=None, num_classes=10).eval()
    with FeatureTap(model, input_size=PROBE) as tap:
        assert tap.layer_name == layer and tap.module is model.get_submodule(layer)
        assert tap.features is None
        with torch.no_grad():
            logits = model(_x())
        assert tuple(tap.features.shape) == shape and logits.shape == (2, 10)
        logits2, features = forward_with_features(model, _x(), tap)
        assert features is tap.features
        torch.testing.assert_close(logits2, logits)
    assert not tap.active and tap.features is None


def test_captured_map_is_what_the_head_pools():
    x = _x()
    resnet = tvm.resnet18(num_classes=10).eval()
    with FeatureTap(resnet, input_size=PROBE) as tap, torch.no_grad():
        logits = resnet(x)
        torch.testing.assert_close(resnet.fc(tap.features.mean((2, 3))), logits)
    # DenseNet: forward does F.relu(features, inplace=True) on the very tensor the hook holds, so
    # the tap ends up with the rectified map that is pooled.
    densenet = tvm.densenet121(num_classes=10).eval()
    with FeatureTap(densenet, "features") as tap, torch.no_grad():
        logits = densenet(x)
        assert tap.features.min() >= 0
        torch.testing.assert_close(densenet.classifier(tap.features.mean((2, 3))), logits)
    # SqueezeNet: the tap is the last Fire module's output, before the classifier's dropout and conv.
    squeezenet = tvm.squeezenet1_1(num_classes=10).eval()
    with FeatureTap(squeezenet, input_size=PROBE) as tap, torch.no_grad():
        logits = squeezenet(x)
        torch.testing.assert_close(squeezenet.classifier(tap.features).flatten(1), logits)
    with FeatureTap(squeezenet, "classifier.2") as tap, torch.no_grad():  # the class score map
        squeezenet(x)
        assert tap.features.shape == (2, 10, 3, 3)


def test_layer_by_name_and_by_module_run_no_probe():
    model = tvm.resnet18(num_classes=10)
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    by_name = FeatureTap(model, "layer3")
    by_module = FeatureTap(model, model.layer3[1].conv2)
    assert not calls  # no probe forward pass when the layer is given
    assert by_name.layer_name == "layer3" and by_module.layer_name == "layer3.1.conv2"
    with torch.no_grad():
        model(_x())
    assert by_name.features.shape == (2, 256, 4, 4)
    assert by_module.features.shape == (2, 256, 4, 4)
    by_name.remove()
    by_name.remove()  # twice is fine
    by_module.remove()


def test_bad_layer_name_lists_candidates():
    model = tvm.resnet18(num_classes=10)
    with pytest.raises(ValueError, match=r"no submodule named 'layer5'.*Did you mean.*'layer4'.*Candidates"):
        FeatureTap(model, "layer5")
    with pytest.raises(ValueError, match="names the model itself"):
        FeatureTap(model, "")
    with pytest.raises(ValueError, match="not a submodule"):
        FeatureTap(model, nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="layer must be"):
        FeatureTap(model, 4)
    with pytest.raises(TypeError, match="model must be"):
        FeatureTap("resnet18")


def test_model_without_a_4d_map_errors_clearly():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(ValueError, match=r"no module whose output is a 4-D.*0: \(1, 192\)"):
        FeatureTap(mlp, input_size=(3, 8, 8))
    # with the default 224 px probe the MLP cannot even run: also a ValueError that says so
    with pytest.raises(ValueError, match=r"could not run a probe forward pass.*input_size"):
        FeatureTap(mlp)
    with pytest.raises(ValueError, match=r"input_size must be \(C, H, W\)"):
        FeatureTap(mlp, input_size=(8, 8))


def test_1x1_final_map_is_not_taken_for_a_smaller_one():
    # resnet18 at 32 px ends in a 1 x 1 map; the default 224 px probe still finds layer4
    model = tvm.resnet18(num_classes=10)
    tap = FeatureTap(model)
    with torch.no_grad():
        model(_x(size=32))
    assert tap.layer_name == "layer4" and tap.features.shape == (2, 512, 1, 1)
    tap.remove()


def test_probe_leaves_modes_statistics_and_rng_alone():
    model = tvm.resnet18(num_classes=10)
    model.train()
    model.layer1.eval()  # mixed modes (e.g. frozen batch norm) must survive the probe
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    tap = FeatureTap(model, input_size=PROBE)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(torch.get_rng_state(), rng)
    tap.remove()


def test_in_chans_from_first_conv():
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    tap = FeatureTap(model)  # probes with (1, 1, 224, 224)
    assert tap.layer_name == "1"  # the ReLU after the conv, before the adaptive pool
    model(torch.randn(2, 1, 16, 16))
    assert tap.features.shape == (2, 8, 8, 8)


def test_forward_with_features_timm_contract():
    model = timm.create_model("resnet18", num_classes=10).eval()
    x = _x()
    with torch.no_grad():
        logits, features = forward_with_features(model, x)
        torch.testing.assert_close(logits, model(x))
    assert features.shape == (2, 512, 2, 2)
    # the automatic tap finds the same map on a timm model
    with FeatureTap(model, input_size=PROBE) as tap, torch.no_grad():
        assert tap.layer_name == "layer4"
        logits_tap, features_tap = forward_with_features(model, x, tap)
        torch.testing.assert_close(features_tap, features)
        torch.testing.assert_close(logits_tap, logits)
    # an explicit tap wins over forward_features
    with FeatureTap(model, "layer3") as tap, torch.no_grad():
        assert forward_with_features(model, x, tap)[1].shape == (2, 256, 4, 4)


def test_transformer_is_not_guessed():
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2)
    with pytest.raises(ValueError, match="3-D outputs"):
        FeatureTap(model, input_size=(3, 32, 32))


def test_forward_with_features_errors():
    model = tvm.resnet18(num_classes=10)
    x = _x()
    with pytest.raises(ValueError, match="no forward_features"):
        forward_with_features(model, x)
    other = FeatureTap(tvm.resnet18(num_classes=10), "layer4")
    with pytest.raises(ValueError, match="another model"):
        forward_with_features(model, x, other)
    tap = FeatureTap(model, "layer4")
    tap.remove()
    with pytest.raises(ValueError, match="removed"):
        forward_with_features(model, x, tap)
    with pytest.raises(TypeError, match="FeatureTap"):
        forward_with_features(model, x, "layer4")

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.unused = nn.Conv2d(4, 4, 3)
            self.pair = nn.Identity()

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    skips = Skips()
    with FeatureTap(skips, "unused") as tap, pytest.raises(RuntimeError, match="did not run"):
        forward_with_features(skips, x, tap)

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Pair())
    with FeatureTap(model, "1"), pytest.raises(TypeError, match="returned tuple"):
        model(x)


def test_features_reset_each_forward_and_released_on_remove():
    model = tvm.resnet18(num_classes=10)
    tap = FeatureTap(model, "layer4")
    with torch.no_grad():
        model(_x())
        first = tap.features
        model(_x(batch=3))
    assert tap.features is not first and tap.features.shape[0] == 3
    tap.clear()
    assert tap.features is None
    tap.remove()
    with torch.no_grad():
        model(_x())
    assert tap.features is None
    assert "removed" in repr(tap)


def test_gradients_flow_through_tapped_features():
    model = tvm.mobilenet_v3_small(num_classes=10).train()
    with FeatureTap(model, "features") as tap:
        logits, features = forward_with_features(model, _x(batch=4), tap)
        assert features.requires_grad
        (features.square().mean() + logits.sum() * 0).backward()
    stem = model.features[0][0].weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    # the classifier is not upstream of the features: only the 0 * logits term reached it
    assert model.classifier[-1].weight.grad.abs().sum() == 0


def test_data_parallel_wrapper_hooks_the_inner_model():
    model = tvm.resnet18(num_classes=10)
    wrapped = nn.DataParallel(model)  # on CPU it just calls the module
    tap = FeatureTap(wrapped, input_size=PROBE)
    assert tap.model is model and tap.layer_name == "layer4"
    with torch.no_grad():
        logits, features = forward_with_features(wrapped, _x(), tap)
    assert logits.shape == (2, 10) and features.shape == (2, 512, 2, 2)
    tap.remove()


def test_distributed_data_parallel(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        timm_model = timm.create_model("resnet18", num_classes=10)
        ddp = nn.parallel.DistributedDataParallel(timm_model)
        with pytest.raises(ValueError, match="bypass"):
            forward_with_features(ddp, _x())
        with FeatureTap(ddp, input_size=PROBE) as tap:
            assert tap.model is timm_model and tap.layer_name == "layer4"
            logits, features = forward_with_features(ddp, _x(), tap)
            F.cross_entropy(logits, torch.tensor([0, 1])).backward()
            assert features.shape == (2, 512, 2, 2)
            assert timm_model.conv1.weight.grad is not None
    finally:
        dist.destroy_process_group()


def test_eval_mode_gives_every_module_its_own_flag_back():
    from biasloss.models.utils import eval_mode, model_device

    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2), torch.nn.Dropout())
    model[1].eval()  # mixed flags, which model.train(previous_mode) would flatten
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False]
    assert model_device(model) == torch.device("cpu") and model_device(torch.nn.ReLU()) == torch.device("cpu")
