"""SkipblockNet as SSD's backbone (paper section 5.4): shapes, training losses, inference."""

from __future__ import annotations

import copy

import pytest
import torch

from biasloss.models import create_model, load_pretrained
from biasloss.models.detection import SkipblockNetSSDFeatures, ssd_skipblocknet


def _targets(n: int, num_classes: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        xy = torch.rand(3, 2, generator=g) * 200
        wh = torch.rand(3, 2, generator=g) * 90 + 10
        out.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, num_classes, (3,), generator=g)})
    return out


def test_feature_maps_at_300px():
    model = ssd_skipblocknet("skipblocknet_s", num_classes=21)
    feats = model.backbone(torch.randn(2, 3, 300, 300))
    assert [tuple(f.shape[1:]) for f in feats.values()] == [
        (480, 19, 19), (672, 10, 10), (512, 5, 5), (256, 3, 3), (256, 2, 2), (128, 1, 1)]
    assert model.backbone.out_channels == [f.shape[1] for f in feats.values()]
    assert model.backbone.c16_name == "stages.5.blocks.0.bn1"  # expansion of the 16 -> 32 block


@pytest.mark.parametrize("head", ["ssd", "ssdlite"])
def test_training_losses_reach_every_parameter(head):
    torch.manual_seed(0)
    model = ssd_skipblocknet("skipblocknet_xs", num_classes=5, head=head).train()
    images = [torch.rand(3, 300, 300), torch.rand(3, 240, 320)]
    losses = model(images, _targets(2, 5))
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_ssdlite_heads_are_separable_and_smaller():
    ssd, lite = (ssd_skipblocknet("skipblocknet_xs", num_classes=11, size=224, head=h) for h in ("ssd", "ssdlite"))
    convs = [m for m in lite.head.modules() if isinstance(m, torch.nn.Conv2d)]
    # per map and task: a 3x3 depthwise convolution, then a 1x1 one to the anchors' outputs
    assert [c.kernel_size for c in convs] == [(3, 3), (1, 1)] * 12
    assert all(c.groups == c.in_channels for c in convs[::2])
    size = {name: sum(p.numel() for p in m.head.parameters()) for name, m in (("ssd", ssd), ("lite", lite))}
    assert size["lite"] < size["ssd"] / 5
    assert torch.equal(torch.tensor(ssd.backbone.out_channels), torch.tensor(lite.backbone.out_channels))
    lite.eval()
    with torch.no_grad():
        out = lite([torch.rand(3, 128, 128)])
    assert set(out[0]) == {"boxes", "scores", "labels"}


def test_inference_returns_detections_in_image_coordinates():
    model = ssd_skipblocknet("skipblocknet_xs", num_classes=5, score_thresh=0.0, detections_per_img=10).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 200, 260)])
    assert len(out) == 1 and set(out[0]) == {"boxes", "scores", "labels"}
    boxes = out[0]["boxes"]
    assert boxes.shape == (10, 4)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 260).all() and (boxes[:, 3] <= 200).all()


def test_trunk_with_classification_weights_and_deepcopy():
    source = create_model("skipblocknet_s", num_classes=1000)
    trunk = create_model("skipblocknet_s", num_classes=1000)
    load_pretrained(trunk, source.state_dict())
    model = ssd_skipblocknet(trunk=trunk, num_classes=21)
    assert torch.equal(model.backbone.trunk.conv_stem.weight, source.conv_stem.weight)
    clone = copy.deepcopy(model).eval()  # the stride-16 hook follows the copy
    model.eval()
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        a, b = model.backbone(x), clone.backbone(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown SkipblockNet variant"):
        ssd_skipblocknet("skipblocknet_xxl")
    with pytest.raises(ValueError, match="background"):
        ssd_skipblocknet(num_classes=1)
    with pytest.raises(ValueError, match="head must be one of ssd, ssdlite"):
        ssd_skipblocknet(head="yolo")
    with pytest.raises(ValueError, match="small_input"):
        SkipblockNetSSDFeatures(create_model("skipblocknet_xs", num_classes=10, small_input=True))
    with pytest.raises(TypeError):
        SkipblockNetSSDFeatures(create_model("torchvision.resnet18", num_classes=10))
