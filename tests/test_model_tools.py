"""Every model works with PyTorch's and timm's model tools: FX, feature extraction, torch.compile,
torch.export, hooks, and timm's head contract (no pooling, pre-logits, reset_classifier).

Parametrised over SkipblockNet-XS (also with ``small_input`` and, as the main job trains it, with
``in_chans=1`` at 28 px) and every model of the CIFAR zoo. The four widths share one graph (the same
blocks, other channel counts and depths), so one width stands for them here; test_skipblocknet
builds and runs every width.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.fx
from conftest import randomise_bn
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import biasloss.models.cifar as zoo
from biasloss.models import SkipblockNet, skipblocknet_xs
from biasloss.models.detection import ssd_skipblocknet

# (name, constructor kwargs, input side): one width, its small-input layout and grayscale
SKIPBLOCKNETS = [
    ("skipblocknet_xs", {}, 64),
    ("skipblocknet_xs", {"small_input": True}, 32),
    ("skipblocknet_xs", {"small_input": True, "in_chans": 1}, 28),
]
CIFAR = [(name, {}, 32) for name in sorted(zoo.MODEL_NAMES)]
ALL = SKIPBLOCKNETS + CIFAR
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" if kw else n for n, kw, _ in ALL]

# The three deepest zoo models repeat one block type 16-58 times and Dynamo traces every repeat
# (about 20 s each), so the compile test builds them shallow: the same blocks, two of each.
SHALLOW = {
    "cifar_densenet_k12": lambda: zoo.CifarDenseNet(num_classes=10, growth_rate=12, block_config=(2, 2, 2),
                                                    stem_width=16),
    "cifar_densenet121": lambda: zoo.CifarDenseNet(num_classes=10, growth_rate=32, block_config=(2, 2, 2, 2),
                                                   stem_width=64, bottleneck=True, compression=0.5),
    "cifar_nasnet_a": lambda: timm.create_model("cifar_nasnet_a", num_classes=10, num_cells=1),
}


def _model(name: str, kwargs: dict, **extra) -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn(timm.create_model(name, **{"num_classes": 10, **kwargs, **extra}))


def _input(model: nn.Module, side: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, model.in_chans, side, side, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name,kwargs,side", ALL, ids=IDS)
def test_fx_symbolic_trace(name, kwargs, side):
    model = _model(name, kwargs)
    x = _input(model, side)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        traced = torch.fx.symbolic_trace(model)
        with torch.no_grad():
            torch.manual_seed(0)
            expected = model(x)
            torch.manual_seed(0)  # dropout draws the same mask
            torch.testing.assert_close(traced(x), expected, rtol=0, atol=0)


# one SkipblockNet (the variants share one graph) and the zoo, the deep ones shallow: what timm's
# test_model_forward_torchscript, test_model_forward_fx_torchscript and test_model_forward_intermediates ask
SCRIPTED = [ALL[0], *CIFAR]


def _built(name: str, kwargs: dict) -> nn.Module:
    return (SHALLOW[name]() if name in SHALLOW else _model(name, kwargs)).eval()


@pytest.mark.parametrize("name,kwargs,side", SCRIPTED, ids=[n for n, _, _ in SCRIPTED])
def test_torchscript_of_the_model_and_of_its_fx_trace(name, kwargs, side):
    model = _built(name, kwargs)
    x = _input(model, side)
    with torch.no_grad():
        expected = model(x)
        for scripted in (torch.jit.script(model), torch.jit.script(torch.fx.symbolic_trace(model))):
            torch.testing.assert_close(scripted(x), expected)


@pytest.mark.parametrize("name,kwargs,side", SCRIPTED, ids=[n for n, _, _ in SCRIPTED])
def test_forward_intermediates(name, kwargs, side):
    model = _built(name, kwargs)
    x = _input(model, side, batch=1)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        assert [m.shape[1] for m in maps] == [f["num_chs"] for f in model.feature_info]
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [m.shape for m in last_two] == [m.shape for m in maps[-2:]]
    with pytest.raises(ValueError, match="feature taps"):
        model.forward_intermediates(x, indices=[len(model.feature_info)])


def test_getter_feature_extractor_of_the_zoo():
    # timm's features_only with feature_cls="getter" runs forward_intermediates and prunes the head
    model = timm.create_model("cifar_resnet18", features_only=True, feature_cls="getter").eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 16, 16))
    assert [m.shape[1] for m in maps] == [64, 128, 256, 512]


@pytest.mark.parametrize("name,kwargs,side", ALL, ids=IDS)
def test_create_feature_extractor_stage_outputs(name, kwargs, side):
    # the return nodes are the modules timm's feature_info names (one per resolution, the last is
    # forward_features' map); SkipblockNet's are stages.0-5 and bn2 (docs/skipblocknet.md)
    model = _model(name, kwargs).eval()
    x = _input(model, side)
    nodes = [info["module"] for info in model.feature_info]
    if hasattr(model, "stages"):
        nodes += [f"stages.{i}" for i in range(len(model.stages)) if f"stages.{i}" not in nodes]
    extractor = create_feature_extractor(model, nodes)
    with torch.no_grad():
        maps = extractor(x)
        assert sorted(maps) == sorted(nodes)
        for info in model.feature_info:
            m = maps[info["module"]]
            assert m.shape[1] == info["num_chs"]
            assert m.shape[-1] == -(-side // info["reduction"])
        torch.testing.assert_close(maps[nodes[len(model.feature_info) - 1]], model.forward_features(x), rtol=0, atol=0)
        if isinstance(model, SkipblockNet):
            taps = model.forward_intermediates(x, intermediates_only=True)
            for info, tap in zip(model.feature_info, taps):
                torch.testing.assert_close(maps[info["module"]], tap, rtol=0, atol=0)


@pytest.mark.parametrize("name,kwargs,side", ALL, ids=IDS)
def test_torch_compile_fullgraph(name, kwargs, side):
    # fullgraph=True raises on any graph break: Dynamo's capture (the "eager" backend) is what finds
    # them. One SkipblockNet also goes through AOTAutograd (aot_eager: the functionalised forward
    # and backward graphs), at three times the cost; test_train_cli compiles the training step so.
    torch._dynamo.reset()
    model = randomise_bn(SHALLOW[name]()) if name in SHALLOW else _model(name, kwargs)
    x = _input(model, side)
    backend = "aot_eager" if (name, kwargs) == ("skipblocknet_xs", {}) else "eager"
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    model.train()
    compiled(x).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kwargs,side", ALL, ids=IDS)
def test_torch_export(name, kwargs, side):
    model = _model(name, kwargs).eval()
    x = _input(model, side)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kwargs,side", ALL, ids=IDS)
def test_unpooled_head_and_reset_classifier(name, kwargs, side):
    model = _model(name, kwargs).eval()
    x = _input(model, side)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[1] == model.num_features
        spatial = features.shape[-2:]
        pre = model.forward_head(features, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)

        unpooled = _model(name, kwargs, num_classes=0, global_pool="").eval()
        out = unpooled(x)
        assert out.dim() == 4 and out.shape[-2:] == spatial
        assert out.shape[1] == unpooled.head_hidden_size

        model.reset_classifier(0, "")
        assert isinstance(model.get_classifier(), nn.Identity)
        out = model(x)
        assert out.shape == (2, model.head_hidden_size, *spatial)
        # no pooling then average pooling equals the pooled pre-logits where the head is a
        # pool followed by per-position layers only (the zoo: pool, then Linear)
        if not isinstance(model, SkipblockNet):
            torch.testing.assert_close(out.mean((2, 3)), pre, rtol=1e-5, atol=1e-5)

        for pool in ("avg", "max"):
            model.reset_classifier(7, pool)
            assert model.get_classifier().out_features == 7
            assert model(x).shape == (2, 7)
        model.reset_classifier(7, "avg")
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), pre, rtol=0, atol=0)


@pytest.mark.parametrize("name,kwargs,side", ALL, ids=IDS)
def test_pretrained_cfg_matches_the_model(name, kwargs, side):
    model = timm.create_model(name, **kwargs).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *cfg["input_size"])
    assert cfg["input_size"][0] == model.in_chans
    with torch.no_grad():
        features = model.forward_features(x)
        assert tuple(features.shape[-2:]) == tuple(cfg["pool_size"])
        assert model(x).shape == (1, cfg["num_classes"])
    assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)
    assert model.get_submodule(cfg["first_conv"]).in_channels == model.in_chans
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


def _record_every_module(model: nn.Module, grad: bool, x: torch.Tensor) -> tuple[dict, dict]:
    """Per module: a copy of its output taken in the hook, and the output tensor itself."""
    copies: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, inputs, output):
            if isinstance(output, torch.Tensor):
                copies[name] = output.detach().clone()
                outputs[name] = output
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.set_grad_enabled(grad):
            model(x.clone().requires_grad_(grad))
    finally:
        for h in handles:
            h.remove()
    return copies, outputs


@pytest.mark.parametrize("name,kwargs,side", ALL, ids=IDS)
def test_hooks_see_the_same_tensor_with_and_without_gradients(name, kwargs, side):
    model = _model(name, kwargs).eval()
    x = _input(model, side)
    with_grad, _ = _record_every_module(model, True, x)
    no_grad, outputs = _record_every_module(model, False, x)
    assert with_grad.keys() == no_grad.keys() and len(no_grad) > 20
    for module_name in no_grad:
        torch.testing.assert_close(no_grad[module_name], with_grad[module_name], rtol=0, atol=0,
                                   msg=lambda m: f"{module_name}: {m}")
    if isinstance(model, SkipblockNet):
        # nothing changes a returned tensor afterwards (no in-place operation on one)
        for module_name, out in outputs.items():
            assert torch.equal(out, no_grad[module_name]), module_name


def test_feature_tap_on_a_stage_is_mode_independent():
    # the reproduction: a skip stage's blocks, with and without gradients
    from biasloss import FeatureTap

    model = randomise_bn(skipblocknet_xs()).eval()
    x = torch.randn(2, 3, 96, 96)
    tap = FeatureTap(model, "stages.2.blocks")
    model(x)
    with_grad = tap.features.detach().clone()
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(tap.features, with_grad, rtol=0, atol=0)


def test_ssd_backbone_fx_traces():
    torch.manual_seed(0)
    model = ssd_skipblocknet("skipblocknet_xs", num_classes=3, size=128).eval()
    backbone = model.backbone
    traced = torch.fx.symbolic_trace(backbone)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected, got = backbone(x), traced(x)
    assert list(got) == list(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)
