"""The authors' SkipblockNet-M checkpoint: key conversion, round trip, identical outputs, errors."""

from __future__ import annotations

from typing import Dict, List, Tuple

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from biasloss.models import (
    convert_official_state_dict,
    load_official_weights,
    official_key_map,
    skipblocknet_m,
    skipblocknet_s,
    to_official_state_dict,
)

# Every key and shape of the authors' released skipblocknet-m.pth (1000 classes), in their order,
# copied from reference/skipblocknet_m_official_keys.json. "-" is a scalar (num_batches_tracked,
# int64); everything else is float32.
MANIFEST = """
first_layer.0.weight 16,3,3,3
first_layer.1.weight 16
first_layer.1.bias 16
first_layer.1.running_mean 16
first_layer.1.running_var 16
first_layer.1.num_batches_tracked -
base_block.conv.0.weight 16,16,1,1
base_block.conv.1.weight 16
base_block.conv.1.bias 16
base_block.conv.1.running_mean 16
base_block.conv.1.running_var 16
base_block.conv.1.num_batches_tracked -
base_block.conv.3.weight 16,1,3,3
base_block.conv.4.weight 16
base_block.conv.4.bias 16
base_block.conv.4.running_mean 16
base_block.conv.4.running_var 16
base_block.conv.4.num_batches_tracked -
base_block.conv.7.weight 16,16,1,1
base_block.conv.8.weight 16
base_block.conv.8.bias 16
base_block.conv.8.running_mean 16
base_block.conv.8.running_var 16
base_block.conv.8.num_batches_tracked -
blocks.0.0.conv.0.weight 64,16,1,1
blocks.0.0.conv.1.weight 64
blocks.0.0.conv.1.bias 64
blocks.0.0.conv.1.running_mean 64
blocks.0.0.conv.1.running_var 64
blocks.0.0.conv.1.num_batches_tracked -
blocks.0.0.conv.3.weight 64,1,3,3
blocks.0.0.conv.4.weight 64
blocks.0.0.conv.4.bias 64
blocks.0.0.conv.4.running_mean 64
blocks.0.0.conv.4.running_var 64
blocks.0.0.conv.4.num_batches_tracked -
blocks.0.0.conv.7.weight 24,64,1,1
blocks.0.0.conv.8.weight 24
blocks.0.0.conv.8.bias 24
blocks.0.0.conv.8.running_mean 24
blocks.0.0.conv.8.running_var 24
blocks.0.0.conv.8.num_batches_tracked -
blocks.0.1.conv.0.weight 72,24,1,1
blocks.0.1.conv.1.weight 72
blocks.0.1.conv.1.bias 72
blocks.0.1.conv.1.running_mean 72
blocks.0.1.conv.1.running_var 72
blocks.0.1.conv.1.num_batches_tracked -
blocks.0.1.conv.3.weight 72,1,3,3
blocks.0.1.conv.4.weight 72
blocks.0.1.conv.4.bias 72
blocks.0.1.conv.4.running_mean 72
blocks.0.1.conv.4.running_var 72
blocks.0.1.conv.4.num_batches_tracked -
blocks.0.1.conv.7.weight 24,72,1,1
blocks.0.1.conv.8.weight 24
blocks.0.1.conv.8.bias 24
blocks.0.1.conv.8.running_mean 24
blocks.0.1.conv.8.running_var 24
blocks.0.1.conv.8.num_batches_tracked -
blocks.0.2.conv.0.weight 72,24,1,1
blocks.0.2.conv.1.weight 72
blocks.0.2.conv.1.bias 72
blocks.0.2.conv.1.running_mean 72
blocks.0.2.conv.1.running_var 72
blocks.0.2.conv.1.num_batches_tracked -
blocks.0.2.conv.3.weight 72,1,5,5
blocks.0.2.conv.4.weight 72
blocks.0.2.conv.4.bias 72
blocks.0.2.conv.4.running_mean 72
blocks.0.2.conv.4.running_var 72
blocks.0.2.conv.4.num_batches_tracked -
blocks.0.2.conv.6.fc.0.weight 24,72
blocks.0.2.conv.6.fc.0.bias 24
blocks.0.2.conv.6.fc.2.weight 72,24
blocks.0.2.conv.6.fc.2.bias 72
blocks.0.2.conv.7.weight 40,72,1,1
blocks.0.2.conv.8.weight 40
blocks.0.2.conv.8.bias 40
blocks.0.2.conv.8.running_mean 40
blocks.0.2.conv.8.running_var 40
blocks.0.2.conv.8.num_batches_tracked -
blocks.0.3.conv.0.weight 120,40,1,1
blocks.0.3.conv.1.weight 120
blocks.0.3.conv.1.bias 120
blocks.0.3.conv.1.running_mean 120
blocks.0.3.conv.1.running_var 120
blocks.0.3.conv.1.num_batches_tracked -
blocks.0.3.conv.3.weight 120,1,5,5
blocks.0.3.conv.4.weight 120
blocks.0.3.conv.4.bias 120
blocks.0.3.conv.4.running_mean 120
blocks.0.3.conv.4.running_var 120
blocks.0.3.conv.4.num_batches_tracked -
blocks.0.3.conv.6.fc.0.weight 32,120
blocks.0.3.conv.6.fc.0.bias 32
blocks.0.3.conv.6.fc.2.weight 120,32
blocks.0.3.conv.6.fc.2.bias 120
blocks.0.3.conv.7.weight 40,120,1,1
blocks.0.3.conv.8.weight 40
blocks.0.3.conv.8.bias 40
blocks.0.3.conv.8.running_mean 40
blocks.0.3.conv.8.running_var 40
blocks.0.3.conv.8.num_batches_tracked -
blocks.0.4.conv.0.weight 240,40,1,1
blocks.0.4.conv.1.weight 240
blocks.0.4.conv.1.bias 240
blocks.0.4.conv.1.running_mean 240
blocks.0.4.conv.1.running_var 240
blocks.0.4.conv.1.num_batches_tracked -
blocks.0.4.conv.3.weight 240,1,5,5
blocks.0.4.conv.4.weight 240
blocks.0.4.conv.4.bias 240
blocks.0.4.conv.4.running_mean 240
blocks.0.4.conv.4.running_var 240
blocks.0.4.conv.4.num_batches_tracked -
blocks.0.4.conv.6.fc.0.weight 64,240
blocks.0.4.conv.6.fc.0.bias 64
blocks.0.4.conv.6.fc.2.weight 240,64
blocks.0.4.conv.6.fc.2.bias 240
blocks.0.4.conv.7.weight 40,240,1,1
blocks.0.4.conv.8.weight 40
blocks.0.4.conv.8.bias 40
blocks.0.4.conv.8.running_mean 40
blocks.0.4.conv.8.running_var 40
blocks.0.4.conv.8.num_batches_tracked -
blocks.1.0.conv.0.weight 240,40,1,1
blocks.1.0.conv.1.weight 240
blocks.1.0.conv.1.bias 240
blocks.1.0.conv.1.running_mean 240
blocks.1.0.conv.1.running_var 240
blocks.1.0.conv.1.num_batches_tracked -
blocks.1.0.conv.3.weight 240,1,3,3
blocks.1.0.conv.4.weight 240
blocks.1.0.conv.4.bias 240
blocks.1.0.conv.4.running_mean 240
blocks.1.0.conv.4.running_var 240
blocks.1.0.conv.4.num_batches_tracked -
blocks.1.0.conv.7.weight 80,240,1,1
blocks.1.0.conv.8.weight 80
blocks.1.0.conv.8.bias 80
blocks.1.0.conv.8.running_mean 80
blocks.1.0.conv.8.running_var 80
blocks.1.0.conv.8.num_batches_tracked -
blocks.1.1.conv.0.weight 200,80,1,1
blocks.1.1.conv.1.weight 200
blocks.1.1.conv.1.bias 200
blocks.1.1.conv.1.running_mean 200
blocks.1.1.conv.1.running_var 200
blocks.1.1.conv.1.num_batches_tracked -
blocks.1.1.conv.3.weight 200,1,3,3
blocks.1.1.conv.4.weight 200
blocks.1.1.conv.4.bias 200
blocks.1.1.conv.4.running_mean 200
blocks.1.1.conv.4.running_var 200
blocks.1.1.conv.4.num_batches_tracked -
blocks.1.1.conv.7.weight 80,200,1,1
blocks.1.1.conv.8.weight 80
blocks.1.1.conv.8.bias 80
blocks.1.1.conv.8.running_mean 80
blocks.1.1.conv.8.running_var 80
blocks.1.1.conv.8.num_batches_tracked -
blocks.1.2.conv.0.weight 184,80,1,1
blocks.1.2.conv.1.weight 184
blocks.1.2.conv.1.bias 184
blocks.1.2.conv.1.running_mean 184
blocks.1.2.conv.1.running_var 184
blocks.1.2.conv.1.num_batches_tracked -
blocks.1.2.conv.3.weight 184,1,3,3
blocks.1.2.conv.4.weight 184
blocks.1.2.conv.4.bias 184
blocks.1.2.conv.4.running_mean 184
blocks.1.2.conv.4.running_var 184
blocks.1.2.conv.4.num_batches_tracked -
blocks.1.2.conv.7.weight 80,184,1,1
blocks.1.2.conv.8.weight 80
blocks.1.2.conv.8.bias 80
blocks.1.2.conv.8.running_mean 80
blocks.1.2.conv.8.running_var 80
blocks.1.2.conv.8.num_batches_tracked -
blocks.1.3.conv.0.weight 184,80,1,1
blocks.1.3.conv.1.weight 184
blocks.1.3.conv.1.bias 184
blocks.1.3.conv.1.running_mean 184
blocks.1.3.conv.1.running_var 184
blocks.1.3.conv.1.num_batches_tracked -
blocks.1.3.conv.3.weight 184,1,3,3
blocks.1.3.conv.4.weight 184
blocks.1.3.conv.4.bias 184
blocks.1.3.conv.4.running_mean 184
blocks.1.3.conv.4.running_var 184
blocks.1.3.conv.4.num_batches_tracked -
blocks.1.3.conv.7.weight 80,184,1,1
blocks.1.3.conv.8.weight 80
blocks.1.3.conv.8.bias 80
blocks.1.3.conv.8.running_mean 80
blocks.1.3.conv.8.running_var 80
blocks.1.3.conv.8.num_batches_tracked -
blocks.2.0.conv.0.weight 480,80,1,1
blocks.2.0.conv.1.weight 480
blocks.2.0.conv.1.bias 480
blocks.2.0.conv.1.running_mean 480
blocks.2.0.conv.1.running_var 480
blocks.2.0.conv.1.num_batches_tracked -
blocks.2.0.conv.3.weight 480,1,3,3
blocks.2.0.conv.4.weight 480
blocks.2.0.conv.4.bias 480
blocks.2.0.conv.4.running_mean 480
blocks.2.0.conv.4.running_var 480
blocks.2.0.conv.4.num_batches_tracked -
blocks.2.0.conv.6.fc.0.weight 120,480
blocks.2.0.conv.6.fc.0.bias 120
blocks.2.0.conv.6.fc.2.weight 480,120
blocks.2.0.conv.6.fc.2.bias 480
blocks.2.0.conv.7.weight 112,480,1,1
blocks.2.0.conv.8.weight 112
blocks.2.0.conv.8.bias 112
blocks.2.0.conv.8.running_mean 112
blocks.2.0.conv.8.running_var 112
blocks.2.0.conv.8.num_batches_tracked -
blocks.2.1.conv.0.weight 672,112,1,1
blocks.2.1.conv.1.weight 672
blocks.2.1.conv.1.bias 672
blocks.2.1.conv.1.running_mean 672
blocks.2.1.conv.1.running_var 672
blocks.2.1.conv.1.num_batches_tracked -
blocks.2.1.conv.3.weight 672,1,3,3
blocks.2.1.conv.4.weight 672
blocks.2.1.conv.4.bias 672
blocks.2.1.conv.4.running_mean 672
blocks.2.1.conv.4.running_var 672
blocks.2.1.conv.4.num_batches_tracked -
blocks.2.1.conv.6.fc.0.weight 168,672
blocks.2.1.conv.6.fc.0.bias 168
blocks.2.1.conv.6.fc.2.weight 672,168
blocks.2.1.conv.6.fc.2.bias 672
blocks.2.1.conv.7.weight 112,672,1,1
blocks.2.1.conv.8.weight 112
blocks.2.1.conv.8.bias 112
blocks.2.1.conv.8.running_mean 112
blocks.2.1.conv.8.running_var 112
blocks.2.1.conv.8.num_batches_tracked -
blocks.3.0.conv.0.weight 672,112,1,1
blocks.3.0.conv.1.weight 672
blocks.3.0.conv.1.bias 672
blocks.3.0.conv.1.running_mean 672
blocks.3.0.conv.1.running_var 672
blocks.3.0.conv.1.num_batches_tracked -
blocks.3.0.conv.3.weight 672,1,5,5
blocks.3.0.conv.4.weight 672
blocks.3.0.conv.4.bias 672
blocks.3.0.conv.4.running_mean 672
blocks.3.0.conv.4.running_var 672
blocks.3.0.conv.4.num_batches_tracked -
blocks.3.0.conv.6.fc.0.weight 168,672
blocks.3.0.conv.6.fc.0.bias 168
blocks.3.0.conv.6.fc.2.weight 672,168
blocks.3.0.conv.6.fc.2.bias 672
blocks.3.0.conv.7.weight 160,672,1,1
blocks.3.0.conv.8.weight 160
blocks.3.0.conv.8.bias 160
blocks.3.0.conv.8.running_mean 160
blocks.3.0.conv.8.running_var 160
blocks.3.0.conv.8.num_batches_tracked -
blocks.3.1.conv.0.weight 960,160,1,1
blocks.3.1.conv.1.weight 960
blocks.3.1.conv.1.bias 960
blocks.3.1.conv.1.running_mean 960
blocks.3.1.conv.1.running_var 960
blocks.3.1.conv.1.num_batches_tracked -
blocks.3.1.conv.3.weight 960,1,5,5
blocks.3.1.conv.4.weight 960
blocks.3.1.conv.4.bias 960
blocks.3.1.conv.4.running_mean 960
blocks.3.1.conv.4.running_var 960
blocks.3.1.conv.4.num_batches_tracked -
blocks.3.1.conv.6.fc.0.weight 240,960
blocks.3.1.conv.6.fc.0.bias 240
blocks.3.1.conv.6.fc.2.weight 960,240
blocks.3.1.conv.6.fc.2.bias 960
blocks.3.1.conv.7.weight 160,960,1,1
blocks.3.1.conv.8.weight 160
blocks.3.1.conv.8.bias 160
blocks.3.1.conv.8.running_mean 160
blocks.3.1.conv.8.running_var 160
blocks.3.1.conv.8.num_batches_tracked -
blocks.3.2.conv.0.weight 960,160,1,1
blocks.3.2.conv.1.weight 960
blocks.3.2.conv.1.bias 960
blocks.3.2.conv.1.running_mean 960
blocks.3.2.conv.1.running_var 960
blocks.3.2.conv.1.num_batches_tracked -
blocks.3.2.conv.3.weight 960,1,5,5
blocks.3.2.conv.4.weight 960
blocks.3.2.conv.4.bias 960
blocks.3.2.conv.4.running_mean 960
blocks.3.2.conv.4.running_var 960
blocks.3.2.conv.4.num_batches_tracked -
blocks.3.2.conv.6.fc.0.weight 240,960
blocks.3.2.conv.6.fc.0.bias 240
blocks.3.2.conv.6.fc.2.weight 960,240
blocks.3.2.conv.6.fc.2.bias 960
blocks.3.2.conv.7.weight 160,960,1,1
blocks.3.2.conv.8.weight 160
blocks.3.2.conv.8.bias 160
blocks.3.2.conv.8.running_mean 160
blocks.3.2.conv.8.running_var 160
blocks.3.2.conv.8.num_batches_tracked -
skip1.core_block.0.weight 96,16,1,1
skip1.core_block.1.weight 96
skip1.core_block.1.bias 96
skip1.core_block.1.running_mean 96
skip1.core_block.1.running_var 96
skip1.core_block.1.num_batches_tracked -
skip1.core_block.3.weight 96,1,5,5
skip1.core_block.4.weight 96
skip1.core_block.4.bias 96
skip1.core_block.4.running_mean 96
skip1.core_block.4.running_var 96
skip1.core_block.4.num_batches_tracked -
skip1.core_block.6.weight 40,96,1,1
skip1.core_block.7.weight 40
skip1.core_block.7.bias 40
skip1.core_block.7.running_mean 40
skip1.core_block.7.running_var 40
skip1.core_block.7.num_batches_tracked -
skip2.core_block.0.weight 40,16,1,1
skip2.core_block.1.weight 40
skip2.core_block.1.bias 40
skip2.core_block.1.running_mean 40
skip2.core_block.1.running_var 40
skip2.core_block.1.num_batches_tracked -
skip2.core_block.3.weight 40,1,3,3
skip2.core_block.4.weight 40
skip2.core_block.4.bias 40
skip2.core_block.4.running_mean 40
skip2.core_block.4.running_var 40
skip2.core_block.4.num_batches_tracked -
skip2.core_block.6.weight 80,40,1,1
skip2.core_block.7.weight 80
skip2.core_block.7.bias 80
skip2.core_block.7.running_mean 80
skip2.core_block.7.running_var 80
skip2.core_block.7.num_batches_tracked -
conv.0.weight 960,160,1,1
conv.1.weight 960
conv.1.bias 960
conv.1.running_mean 960
conv.1.running_var 960
conv.1.num_batches_tracked -
classifier.0.weight 1280,960
classifier.0.bias 1280
classifier.3.weight 1000,1280
classifier.3.bias 1000
"""


def _manifest() -> List[Tuple[str, Tuple[int, ...]]]:
    out = []
    for line in MANIFEST.strip().splitlines():
        key, shape = line.split()
        out.append((key, () if shape == "-" else tuple(int(s) for s in shape.split(","))))
    return out


def _official_state_dict(seed: int = 0) -> Dict[str, torch.Tensor]:
    """A state dict with the manifest's keys and shapes, filled like a trained network's."""
    g = torch.Generator().manual_seed(seed)
    sd: Dict[str, torch.Tensor] = {}
    for key, shape in _manifest():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(1000, dtype=torch.int64)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean") or key.endswith(".bias"):
            sd[key] = (torch.rand(shape, generator=g) - 0.5) * 0.2
        elif len(shape) == 1:  # BatchNorm weight
            sd[key] = torch.rand(shape, generator=g) * 0.5 + 0.75
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            sd[key] = torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5
    return sd


# ---------------------------------------------------------------------------------------------
# An independent re-statement of the authors' model, written from the layout facts (module
# positions, activations, adaptive pooling to 28 and 14) with their exact key names. It runs at
# 224 px only, like theirs.
# ---------------------------------------------------------------------------------------------


class _HardSigmoid(nn.Module):
    def forward(self, x):
        return F.relu6(x + 3.0) / 6.0


class _HardSwish(nn.Module):
    def forward(self, x):
        return x * F.relu6(x + 3.0) / 6.0


def _act(hs: bool) -> nn.Module:
    return _HardSwish() if hs else nn.ReLU()


def _div8(v: float) -> int:
    return timm.layers.make_divisible(v, 8)


class _SE(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        r = _div8(c // 4)
        self.fc = nn.Sequential(nn.Linear(c, r), nn.ReLU(), nn.Linear(r, c), _HardSigmoid())

    def forward(self, x):
        w = self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return x * w[:, :, None, None]


class _Block(nn.Module):
    def __init__(self, cin, hidden, cout, k, s, se, hs):
        super().__init__()
        self.residual = s == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), _act(hs),
            nn.Conv2d(hidden, hidden, k, s, k // 2, groups=hidden, bias=False), nn.BatchNorm2d(hidden), _act(hs),
            _SE(hidden) if se else nn.Identity(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class _Skip(nn.Module):
    def __init__(self, hidden, cout, k, size):
        super().__init__()
        self.size = size
        self.core_block = nn.Sequential(
            nn.Conv2d(16, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, k, 1, k // 2, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return self.core_block(F.adaptive_avg_pool2d(x, self.size))


class _TheirLayout(nn.Module):
    # (kernel, expansion, out, SE, hard-swish, stride), grouped as their blocks.0..3
    GROUPS = (
        ((3, 4, 24, 0, 0, 2), (3, 3, 24, 0, 0, 1), (5, 3, 40, 1, 0, 2), (5, 3, 40, 1, 0, 1), (5, 6, 40, 1, 1, 1)),
        ((3, 6, 80, 0, 1, 2), (3, 2.5, 80, 0, 1, 1), (3, 2.3, 80, 0, 1, 1), (3, 2.3, 80, 0, 1, 1)),
        ((3, 6, 112, 1, 1, 1), (3, 6, 112, 1, 1, 1)),
        ((5, 6, 160, 1, 1, 2), (5, 6, 160, 1, 1, 1), (5, 6, 160, 1, 1, 1)),
    )

    def __init__(self, num_classes=1000):
        super().__init__()
        self.first_layer = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), _HardSwish())
        self.base_block = _Block(16, 16, 16, 3, 1, False, True)
        groups, cin = [], 16
        for rows in self.GROUPS:
            blocks = []
            for k, t, c, se, hs, s in rows:
                blocks.append(_Block(cin, _div8(cin * t), c, k, s, se, hs))
                cin = c
            groups.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(groups)
        self.skip1 = _Skip(_div8(16 * 6), 40, 5, 28)
        self.skip2 = _Skip(_div8(16 * 2.3), 80, 3, 14)
        self.conv = nn.Sequential(nn.Conv2d(160, 960, 1, bias=False), nn.BatchNorm2d(960), _HardSwish())
        self.classifier = nn.Sequential(nn.Linear(960, 1280), _HardSwish(), nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def features(self, x):
        base = self.base_block(self.first_layer(x))
        x = self.blocks[0](base)
        x = self.blocks[1](x + self.skip1(base))
        x = self.blocks[2](x + self.skip2(base))
        return self.conv(self.blocks[3](x))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


# ---------------------------------------------------------------------------------------------


def test_reference_layout_matches_manifest():
    ref = _TheirLayout().state_dict()
    assert [(k, tuple(v.shape)) for k, v in ref.items()] == _manifest()


def test_conversion_covers_every_key():
    key_map = official_key_map()
    assert list(key_map) == [k for k, _ in _manifest()]
    ours = skipblocknet_m().state_dict()
    assert sorted(key_map.values()) == sorted(ours)  # one to one, onto our whole state dict
    for theirs, shape in _manifest():
        our_shape = tuple(ours[key_map[theirs]].shape)
        if ".fc." in theirs and theirs.endswith("weight"):  # SE Linear -> 1x1 conv
            assert our_shape == shape + (1, 1)
        else:
            assert our_shape == shape, theirs


def test_round_trip():
    sd = _official_state_dict()
    model = load_official_weights(skipblocknet_m(), sd)
    back = to_official_state_dict(model)
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k
    # the pure-dict converters agree with the model path
    conv = convert_official_state_dict(sd)
    assert all(torch.equal(conv[k], v) for k, v in model.state_dict().items())


def test_same_outputs_as_their_model():
    sd = _official_state_dict(seed=1)
    theirs = _TheirLayout()
    theirs.load_state_dict(sd, strict=True)
    theirs.eval()
    ours = load_official_weights(skipblocknet_m(), sd).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), theirs.features(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_load_from_file_and_wrappers(tmp_path):
    sd = _official_state_dict()
    path = tmp_path / "skipblocknet-m.pth"
    torch.save(sd, path)
    a = load_official_weights(skipblocknet_m(), path).state_dict()
    b = load_official_weights(skipblocknet_m(), str(path)).state_dict()
    c = load_official_weights(skipblocknet_m(), {"state_dict": {"module." + k: v for k, v in sd.items()}})
    for k, v in a.items():
        assert torch.equal(v, b[k]) and torch.equal(v, c.state_dict()[k])


def test_small_input_model_takes_the_same_weights():
    sd = _official_state_dict()
    model = load_official_weights(skipblocknet_m(small_input=True), sd).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_timm_pretrained_file(tmp_path):
    sd = _official_state_dict()
    path = tmp_path / "skipblocknet-m.pth"
    torch.save(sd, path)
    model = timm.create_model("skipblocknet_m", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    expected = convert_official_state_dict(sd)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    # another number of classes: everything but the classifier
    model = timm.create_model(
        "skipblocknet_m", pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert model.classifier.out_features == 10
    assert torch.equal(model.conv_stem.weight, expected["conv_stem.weight"])


def test_error_another_model_shape():
    sd = _official_state_dict()
    with pytest.raises(ValueError, match="does not fit this model.*skipblocknet_m"):
        load_official_weights(skipblocknet_s(), sd)
    with pytest.raises(ValueError, match=r"classifier.weight.*\(1000, 1280\).*\(10, 1280\).*num_classes=1000"):
        load_official_weights(skipblocknet_m(num_classes=10), sd)
    with pytest.raises(ValueError, match="conv_stem"):
        load_official_weights(skipblocknet_m(in_chans=1), sd)


def test_error_not_their_checkpoint():
    torchvision = pytest.importorskip("torchvision")
    with pytest.raises(ValueError, match="not the authors' SkipblockNet-M checkpoint.*unrecognised"):
        load_official_weights(skipblocknet_m(), torchvision.models.resnet18().state_dict())
    ours = skipblocknet_m().state_dict()
    with pytest.raises(ValueError, match="load_state_dict"):
        load_official_weights(skipblocknet_m(), ours)
    sd = _official_state_dict()
    del sd["skip2.core_block.3.weight"]
    with pytest.raises(ValueError, match="missing.*skip2.core_block.3.weight"):
        load_official_weights(skipblocknet_m(), sd)
    with pytest.raises(TypeError):
        load_official_weights(nn.Linear(2, 2), _official_state_dict())
    with pytest.raises(TypeError):
        load_official_weights(skipblocknet_m(), [1, 2, 3])


def test_error_unreadable_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_official_weights(skipblocknet_m(), bad)
    with pytest.raises(FileNotFoundError):
        load_official_weights(skipblocknet_m(), tmp_path / "missing.pth")


def test_to_official_needs_m():
    with pytest.raises(ValueError, match="SkipblockNet-M"):
        to_official_state_dict(skipblocknet_s())
