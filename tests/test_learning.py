"""Training learns: ``biasloss train`` end to end reaches accuracies far above chance.

Both runs are seeded (the trainer's default seed) and CPU-only; each takes 12-15 s with
OMP_NUM_THREADS=1 on a busy 2-core machine. The models are small timm networks rather than
SkipblockNet-XS, whose stride-8 stem for small images makes it about 10x slower on a CPU (the
digits recipe with it takes 70 s); the recipes' optimiser, schedule, augmentation and the Bias
Loss are the ones a user gets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biasloss.cli import main

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def _train(out: Path, *argv: str) -> dict:
    assert main(["train", *argv, "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    return lines[-1]


def test_digits_recipe_reaches_90_percent(tmp_path):
    pytest.importorskip("sklearn")
    # The digits recipe (SGD + Nesterov, one-cycle, crop augmentation, the Bias Loss) on all
    # 1437 training images, validated on the 360 held out. MobileNetV3-Small 0.5x reaches 96.7 %
    # after 10 epochs (90.0 % after the recipe's 5: too close to the bar to be a stable test).
    # Chance is 10 %; scikit-learn's LogisticRegression on the raw 8x8 pixels gets 95.8 % on a
    # stratified 80/20 split (random_state=0), so 90 % is a low bar for a working trainer.
    last = _train(tmp_path / "run", "--dataset", "digits", "--model", "mobilenetv3_small_050", "--epochs", "10")
    assert last["epoch"] == 10
    assert last["val_top1"] >= 90.0, last


@pytest.mark.skipif(not all((FASHION_MNIST / f).is_file() for f in FASHION_FILES),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_few_thousand_images_beats_chance(tmp_path):
    # One epoch on the first 3000 training images (94 steps of 32), validated on the first 3000
    # test images: ResNet-10-T gets 73 %. Chance is 10 % (the ten classes are balanced).
    last = _train(tmp_path / "run", "--dataset", "fashion-mnist", "--data-dir", str(FASHION_MNIST),
                  "--model", "resnet10t", "--limit", "3000", "--epochs", "1", "--batch-size", "32", "--lr", "0.05")
    assert last["epoch"] == 1
    assert last["val_top1"] >= 60.0, last
