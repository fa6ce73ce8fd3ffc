"""``biasloss plot samples``: per-image variance and weight over a training split, and the pictures."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from biasloss.analysis.samples import plot_samples, sample_weights  # noqa: E402
from biasloss.cli import main  # noqa: E402

# eq. 3 with the batch min-max scaling: z(s) = exp(alpha s) - beta, s in [0, 1] within each batch,
# so with alpha = beta = 0.3 every batch holds a 0.7 (its lowest variance) and an
# exp(0.3) - 0.3 = 1.04986 (its highest); the clamp [0.5, 1.5] does not bite
LOW, HIGH = 0.7, math.exp(0.3) - 0.3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples") / "run"
    assert main(["train", "--dataset", "digits", "--model", "skipblocknet_xs", "--loss", "bias", "--epochs", "1",
                 "--limit", "160", "--batch-size", "32", "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_every_training_image_gets_its_batch_scaled_weight(run):
    result = sample_weights(run / "last.pt", count=4)
    assert result.variance.shape == result.weight.shape == (160,)  # 5 batches of 32
    assert (result.variance > 0).all()
    for b in range(5):
        w = result.weight[32 * b: 32 * (b + 1)]
        assert w.min().item() == pytest.approx(LOW, abs=1e-6) and w.max().item() == pytest.approx(HIGH, abs=1e-6)
    assert [item[3] for item in result.lowest] == sorted(result.weight.tolist())[:4]
    assert [item[3] for item in result.highest] == sorted(result.weight.tolist(), reverse=True)[:4]
    image, label, _, _ = result.lowest[0]
    assert image.shape == (1, 32, 32) and 0 <= image.min() and image.max() <= 1 and 0 <= label < 10
    assert (result.alpha, result.beta, result.clamp) == (0.3, 0.3, (0.5, 1.5))


def test_pictures_and_command(run, tmp_path, capsys):
    from matplotlib.image import imread

    result = sample_weights(run / "last.pt", count=3, limit=64)
    grid, hist = plot_samples(result, tmp_path / "grid.png", tmp_path / "hist.png")
    assert imread(grid).shape[1] > imread(grid).shape[0]  # two rows of three images: wider than tall
    assert imread(hist).ndim == 3
    assert main(["plot", "samples", "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "g.svg"),
                 "--count", "2", "--limit", "64"]) == 0
    assert (tmp_path / "g.svg").read_text().count("<image") == 4  # 2 lowest + 2 highest
    assert main(["plot", "samples", "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "g.txt")]) == 2
    assert "must end in" in capsys.readouterr().err
