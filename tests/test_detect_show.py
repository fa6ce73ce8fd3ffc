"""``biasloss detect show``: the picture of true and predicted boxes, on tiny Fashion-MNIST scenes."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from PIL import Image

from biasloss.cli import main
from biasloss.data import DatasetNotFoundError
from biasloss.detection import SCENE_CLASSES, VOCBoxes, make_scenes
from biasloss.detection.show import (
    COLUMNS,
    MIN_SIDE,
    PAD,
    PRED_COLOR,
    TRUE_COLOR,
    TRUE_DASH_COLOR,
    add_legend,
    draw_detections,
    legend_entries,
    register_show,
    run_detect_show,
)
from biasloss.detection.train import build_detector

SIZE = 64
SCALE = MIN_SIDE // SIZE  # 4: each 64 px scene becomes 256 px


def read_image(path):
    return torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread: these tiny convolutions only lose time to threads fighting other jobs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    try:
        return make_scenes(tmp_path_factory.mktemp("show") / "s", train=4, val=0, test=3, size=SIZE)
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST not available: {e}")


@pytest.fixture(scope="module")
def test_set(scenes):
    return VOCBoxes(scenes, "2007", "test", train=False, classes=SCENE_CLASSES)


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return build_detector("skipblocknet_xs", SIZE, num_classes=len(SCENE_CLASSES)).eval()


class FakeModel:
    """A detector that predicts one fixed box in every scene."""

    def __init__(self, box, score, label=1):
        self.out = {"boxes": torch.tensor([box], dtype=torch.float32), "scores": torch.tensor([score]),
                    "labels": torch.tensor([label])}

    def __call__(self, images):
        return [dict(self.out) for _ in images]


def _mask(grid, color):
    return (grid == torch.tensor(color, dtype=torch.uint8)[:, None, None]).all(0)


def _origin(k, n):
    """Top-left pixel of scene ``k`` of ``n`` in the grid."""
    cols, side = min(COLUMNS, n), SIZE * SCALE
    return PAD + (k // cols) * (side + PAD), PAD + (k % cols) * (side + PAD)


def test_true_boxes_drawn_and_grid_shape(test_set, detector):
    indices = [0, 1, 2]
    grid = draw_detections(detector, test_set, indices, score_thresh=1.0)
    side = SIZE * SCALE
    assert grid.dtype == torch.uint8 and grid.shape == (3, side + 2 * PAD, 3 * (side + PAD) + PAD)
    green, red = _mask(grid, TRUE_COLOR), _mask(grid, PRED_COLOR)
    assert not red.any()  # nothing scores 1.0
    for k, i in enumerate(indices):
        oy, ox = _origin(k, len(indices))
        for x0, y0, x1, y1 in test_set[i][1]["boxes"].long().tolist():
            # each true box's left and right edges, scaled up, are green along most of their length
            rows = slice(oy + y0 * SCALE + 16, oy + y1 * SCALE - 4)
            assert green[rows, ox + x0 * SCALE].float().mean() > 0.5
            assert green[rows, ox + x1 * SCALE - 1].float().mean() > 0.5
    # two rows of scenes once there are more than COLUMNS
    grid = draw_detections(detector, test_set, [0, 1, 2, 0, 1], score_thresh=1.0)
    assert grid.shape == (3, 2 * (side + PAD) + PAD, COLUMNS * (side + PAD) + PAD)


def test_predicted_boxes_drawn_above_threshold(test_set, detector):
    model = FakeModel([8.0, 8.0, 40.0, 40.0], 0.9)
    grid = draw_detections(model, test_set, [1, 2])
    red = _mask(grid, PRED_COLOR)
    for k in range(2):
        oy, ox = _origin(k, 2)
        rows = slice(oy + 8 * SCALE + 16, oy + 40 * SCALE - 4)
        assert red[rows, ox + 8 * SCALE].all() and red[rows, ox + 40 * SCALE - 1].all()
        assert red[oy + 40 * SCALE - 1, ox + 8 * SCALE: ox + 40 * SCALE].all()
    assert not _mask(draw_detections(model, test_set, [1, 2], score_thresh=0.95), PRED_COLOR).any()
    # score 0 draws all the untrained detector's boxes
    assert _mask(draw_detections(detector, test_set, [0], score_thresh=0.0), PRED_COLOR).any()


@pytest.mark.parametrize("indices,thresh,message", [
    ([], 0.5, "at least one"),
    ([3], 0.5, r"0\.\.2"),
    ([0, -1], 0.5, r"0\.\.2"),
    ([0], 1.5, r"\[0, 1\]"),
    ([0], -0.1, r"\[0, 1\]"),
    ([0], math.nan, r"\[0, 1\]"),
])
def test_bad_arguments(test_set, indices, thresh, message):
    with pytest.raises(ValueError, match=message):
        draw_detections(FakeModel([0, 0, 4, 4], 0.9), test_set, indices, score_thresh=thresh)


def test_show_from_a_checkpoint(scenes, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["detect", "train", "--dataset", "scenes", "--data-dir", str(scenes), "--model", "skipblocknet_xs",
                 "--image-size", str(SIZE), "--batch-size", "2", "--workers", "1", "--epochs", "1", "--limit", "2",
                 "--out", str(run), "--device", "cpu"]) == 0
    capsys.readouterr()
    parser = argparse.ArgumentParser()
    register_show(parser.add_subparsers())
    out = tmp_path / "pics" / "show.png"
    args = parser.parse_args(["show", "--checkpoint", str(run / "last.pt"), "--out", str(out), "--indices", "2", "0",
                              "--score-thresh", "0", "--device", "cpu"])
    assert args.func(args) == 0
    image = read_image(str(out))
    side = SIZE * SCALE
    legend = add_legend(torch.zeros(3, 0, 2 * (side + PAD) + PAD, dtype=torch.uint8), 0.0)  # the band alone
    assert image.dtype == torch.uint8 and image.shape == (3, side + 2 * PAD + legend.shape[1], 2 * (side + PAD) + PAD)
    assert torch.equal(image[:, -legend.shape[1]:], legend)  # the legend below the scenes
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and str(out) in line and "5 true boxes" in line
    # defaults: the first 8 (here all 3) test scenes
    run_detect_show(argparse.Namespace(checkpoint=str(run / "last.pt"), out=str(out), images=None, indices=None,
                                       score_thresh=None, data_dir=None, device="cpu"))
    assert read_image(str(out)).shape[-1] == 3 * (side + PAD) + PAD
    with pytest.raises(ValueError, match="--images"):
        run_detect_show(argparse.Namespace(checkpoint=str(run / "last.pt"), out=str(out), images=0, indices=None,
                                           score_thresh=None, data_dir=None, device="cpu"))


def test_the_picture_has_a_legend(test_set):
    model = FakeModel([8.0, 8.0, 40.0, 40.0], 0.9)
    grid = draw_detections(model, test_set, [1, 2])
    pictured = add_legend(grid, 0.5)
    assert torch.equal(pictured[:, :grid.shape[1]], grid) and pictured.shape[-1] == grid.shape[-1]
    band = pictured[:, grid.shape[1]:]
    assert band.shape[1] >= 2 * 16  # a line for each kind of box
    # a sample of each kind of box: the true box's two tones, the predicted box's red
    for color in (TRUE_COLOR, TRUE_DASH_COLOR, PRED_COLOR):
        assert _mask(band[:, :, :PAD + 32], color).any(), color
    assert (band[:, :, PAD + 40:] < 128).any()  # text
    (truth_kind, truth), (pred_kind, pred) = legend_entries(0.5)
    assert (truth_kind, pred_kind) == ("truth", "prediction")
    assert "true box" in truth and "score" in pred and "confidence" in pred and ">= 0.5" in pred


def test_true_boxes_stand_out_from_every_scene_colour(test_set, scenes):
    """The scenes' backgrounds, clutter and garments take their colours from the whole RGB cube
    (green too, which the true boxes used to be): no one colour is safe. A true box is white with
    black dashes: on any colour one of the two differs by at least half the range in a channel."""
    colours = torch.cat([test_set[i][0].reshape(3, -1) for i in range(len(test_set))], dim=1).T * 255
    tones = torch.tensor([TRUE_COLOR, TRUE_DASH_COLOR], dtype=torch.float32)
    contrast = (colours[:, None, :] - tones[None]).abs().amax(-1).amax(-1)  # the better tone, per colour
    assert contrast.min() >= 127.5
    assert TRUE_COLOR != PRED_COLOR and TRUE_DASH_COLOR != PRED_COLOR and (0, 255, 0) not in (TRUE_COLOR,
                                                                                                 TRUE_DASH_COLOR)
    # both tones are drawn along every true box
    grid = draw_detections(FakeModel([0, 0, 4, 4], 0.9), test_set, [0], score_thresh=1.0)
    oy, ox = _origin(0, 1)
    for x0, y0, x1, y1 in test_set[0][1]["boxes"].long().tolist():
        edge = grid[:, oy + y0 * SCALE + 16: oy + y1 * SCALE - 4, ox + x0 * SCALE: ox + x0 * SCALE + 3]
        assert _mask(edge, TRUE_COLOR).any() and _mask(edge, TRUE_DASH_COLOR).any()
