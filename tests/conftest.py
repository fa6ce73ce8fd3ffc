"""Helpers shared by several test modules (import them with ``from conftest import ...``):
small on-disk data sets in the layouts the loaders read, and BatchNorm statistics worth testing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

# ---------------------------------------------------------------------------------------------
# ImageNet-style folders of tiny JPEGs
# ---------------------------------------------------------------------------------------------

SIZES = [(40, 30), (30, 44), (36, 36), (50, 28)]


def write_jpeg(path: Path, seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    w, h = SIZES[seed % len(SIZES)]
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, quality=90)


def write_imagenet(root: Path, classes=("n01440764", "n01443537", "n01484850"), n_train=4, n_val=2) -> None:
    seed = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for c in classes:
            for i in range(n):
                # one grayscale JPEG per class, as ImageNet has: read as RGB
                write_jpeg(root / split / c / f"{c}_{i}.JPEG", seed, "L" if i == 1 else "RGB")
                seed += 1


# ---------------------------------------------------------------------------------------------
# PASCAL VOC trees in torchvision's VOCDetection layout
# ---------------------------------------------------------------------------------------------

VOC_CLASSES = ("dog", "person", "car")


def write_voc(root: Path, year: str = "2012", splits: dict[str, int] | None = None) -> Path:
    """``root/VOCdevkit/VOC<year>`` with JPEGs, XML annotations (one or two objects each, some
    difficult) and ``ImageSets/Main/<split>.txt``; returns ``root``."""
    splits = splits or {"train": 4, "val": 2}
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    k = 0
    for split, n in splits.items():
        ids = []
        for _ in range(n):
            name = f"{year}_{k:06d}"
            w, h = (120, 90) if k % 2 else (100, 130)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
            objects = []
            for j in range(1 + k % 2):
                x0, y0 = 5 + 20 * j, 8 + 10 * j
                objects.append(
                    f"<object><name>{VOC_CLASSES[(k + j) % 3]}</name><pose>Unspecified</pose>"
                    "<truncated>0</truncated>"
                    f"<difficult>{1 if (k == 3 and j == 1) else 0}</difficult>"
                    f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                    f"<xmax>{x0 + 50}</xmax><ymax>{y0 + 60}</ymax></bndbox></object>"
                )
            (base / "Annotations" / f"{name}.xml").write_text(
                f"<annotation><folder>VOC{year}</folder><filename>{name}.jpg</filename>"
                f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>0</segmented>"
                + "".join(objects) + "</annotation>"
            )
            ids.append(name)
            k += 1
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so eval-mode checks mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


# ---------------------------------------------------------------------------------------------
# torchrun
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def torchrun() -> str:
    """The venv's ``torchrun``; the test is skipped where torch.distributed or torchrun is missing."""
    import os
    import shutil
    import sys

    if not torch.distributed.is_available():
        pytest.skip("no torch.distributed")
    path = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if path is None:
        pytest.skip("torchrun not installed")
    return path


# ---------------------------------------------------------------------------------------------
# Parallel runs (pytest -n 2): one torch thread per worker process
# ---------------------------------------------------------------------------------------------


def pytest_configure(config) -> None:
    """Under pytest-xdist each worker gets one intra-op thread: two workers of two threads each on
    two cores spin-wait on each other and run several times slower than one worker alone."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"  # for the subprocesses a test starts, too
        torch.set_num_threads(1)
