"""PASCAL VOC data, VOC mAP against hand-computed values, and ``biasloss detect`` end to end."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import write_voc

from biasloss.cli import main
from biasloss.detection import VOCBoxes, average_precision, voc_map
from biasloss.data import DetectionLoader
from biasloss.train.checkpoint import load_checkpoint


def _gt(boxes, labels, difficult=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult)
    return out


def _det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def test_map_by_hand():
    # two dogs; detections: hit (0.9), miss (0.8), hit (0.7) -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    gt = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])]
    det = [_det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [1, 1, 1])]
    # 11-point: recall thresholds 0..0.5 see precision 1, 0.6..1.0 see 2/3
    assert voc_map(det, gt, 2)["map"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    # exact area under the envelope: 0.5 * 1 + 0.5 * 2/3
    assert voc_map(det, gt, 2, use_07_metric=False)["map"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_map_difficult_rule():
    # one class: A and C count, B is difficult. Detections by score: A (0.9), B (0.8), a miss
    # (0.7), C (0.6). VOC: the B detection is neither TP nor FP, so the ranked list is
    # TP, FP, TP over 2 positives: recall 1/2, 1/2, 1 at precision 1, 1/2, 2/3.
    gt = [_gt([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 1, 1], difficult=[False, True, False])]
    det = [_det([[0, 0, 10, 10], [20, 20, 30, 30], [70, 70, 80, 80], [40, 40, 50, 50]],
                [0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1])]
    # 11-point: thresholds 0..0.5 (six) see precision 1, 0.6..1.0 (five) see 2/3 -> 28/33 = 0.8485.
    # Were B a positive: 10/11 = 0.9091 (TP, TP, FP, TP over 3); were its detection a FP:
    # (6 + 5 * 1/2) / 11 = 0.7727.
    assert voc_map(det, gt, 2)["map"] == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)
    # area: 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert voc_map(det, gt, 2, use_07_metric=False)["map"] == pytest.approx(5 / 6, abs=1e-12)


def test_map_duplicate_rule():
    # one image: A = [0, 0, 10, 10], A2 = [0, 1, 10, 11] (two overlapping objects) and B. Ranked
    # detections: A exactly (0.9) -> TP on A; D = [0, 0.25, 10, 10.25] (0.8), whose best overlap
    # is A again (IoU 97.5/102.5 = 0.95; with A2 92.5/107.5 = 0.86) -> a duplicate, FP (VOC does
    # not fall back to the next box); B (0.7) -> TP. So TP, FP, TP over 3 positives, the FP
    # before full recall: recall 1/3, 1/3, 2/3 at precision 1, 1/2, 2/3.
    gt = [_gt([[0, 0, 10, 10], [0, 1, 10, 11], [20, 20, 30, 30]], [1, 1, 1])]
    det = [_det([[0, 0, 10, 10], [0, 0.25, 10, 10.25], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [1, 1, 1])]
    # 11-point: t = 0..0.3 (four) see 1, t = 0.4..0.6 (three) see 2/3, t = 0.7..1.0 (four) see 0:
    # 6/11 = 0.5455. Were D a TP (on A or on A2): 1; were it skipped: 7/11 = 0.6364.
    assert voc_map(det, gt, 2)["map"] == pytest.approx((4 + 3 * 2 / 3) / 11, abs=1e-12)
    # area: 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert voc_map(det, gt, 2, use_07_metric=False)["map"] == pytest.approx(5 / 9, abs=1e-12)


def test_map_edge_cases():
    # a class with no positives is left out of the mean, whatever is detected for it
    gt = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], difficult=[False, True])]
    det = [_det([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [1, 2])]
    assert voc_map(det, gt, 3)["ap"] == {1: pytest.approx(1.0)}
    assert voc_map([_det([], [], [])], [_gt([[0, 0, 5, 5]], [1])], 2)["map"] == 0.0
    assert voc_map([_det([[0, 0, 5, 5]], [0.5], [1])], [_gt([[0, 0, 5, 5]], [1])], 2)["map"] == pytest.approx(1.0)
    # IoU 50/120 = 0.42 (below 0.5) is a miss
    assert voc_map([_det([[0, 0, 5, 10]], [0.5], [1])], [_gt([[0, 0, 12, 10]], [1])], 2)["map"] == 0.0
    with pytest.raises(ValueError, match="images"):
        voc_map([], [gt[0]], 2)
    assert average_precision(torch.tensor([]), torch.tensor([])) == 0.0


def test_voc_data(tmp_path):
    root = write_voc(tmp_path)
    val = VOCBoxes(root, "2012", "val", train=False)
    image, target = val[1]
    assert image.dtype == torch.float32 and image.shape == (3, 90, 120) and 0 <= image.min() <= image.max() <= 1
    # VOC's 1-based inclusive corners become torchvision's 0-based xyxy
    assert target["boxes"].tolist() == [[4.0, 7.0, 55.0, 68.0], [24.0, 17.0, 75.0, 78.0]]
    assert target["labels"].tolist() == [7, 12] and target["difficult"].tolist() == [False, False]
    train = VOCBoxes(root, "2012", "train", train=True)
    assert len(train) == 4
    _, target = train[3]  # its second object is difficult: dropped for training
    assert len(target["labels"]) <= 1
    for i in range(len(train)):
        image, target = train[i]
        h, w = image.shape[-2:]
        assert (target["boxes"][:, 2] <= w).all() and (target["boxes"][:, 3] <= h).all()
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        VOCBoxes(root, "2007", "test", train=False)


def test_detect_train_eval_resume(tmp_path, capsys):
    root = write_voc(tmp_path / "data")
    common = ["detect", "train", "--data-dir", str(root), "--train-set", "train", "--test-year", "2012",
              "--test-set", "val", "--model", "skipblocknet_xs", "--batch-size", "2", "--workers", "1",
              "--epochs", "2", "--out", str(tmp_path / "run")]
    assert main(common) == 0
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    capsys.readouterr()
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--workers", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["map"] == lines[-1]["map"] and result["images"] == 2
    assert main(["detect", "train", "--resume", str(tmp_path / "run" / "last.pt"), "--epochs", "3"]) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 3
    # the log holds each epoch once across the resume
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]


def test_detect_trains_and_evaluates_on_the_scenes(tmp_path, capsys, monkeypatch):
    from biasloss.detection import SCENE_CLASSES, make_scenes

    data = make_scenes(tmp_path / "scenes", train=8, val=3, test=4, size=64)
    run = tmp_path / "run"
    assert main(["detect", "train", "--dataset", "scenes", "--data-dir", str(data), "--model", "skipblocknet_xs",
                 "--head", "ssdlite", "--image-size", "96", "--batch-size", "4", "--workers", "1", "--epochs", "1",
                 "--out", str(run)]) == 0
    (line,) = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["args"]["dataset"] == "scenes" and ckpt["args"]["train_set"] == "train"
    assert ckpt["args"]["head"] == "ssdlite"  # eval below rebuilds that head from the checkpoint
    # the head predicts the 10 garment classes and the background
    assert ckpt["model"]["head.classification_head.module_list.0.1.weight"].shape[0] % len(SCENE_CLASSES) == 0
    capsys.readouterr()
    assert main(["detect", "eval", "--checkpoint", str(run / "last.pt"), "--workers", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["map"] == line["map"] and result["images"] == 4 and result["test_set"] == "test"
    # eval reads the test split alone: a folder without the training split's list is enough;
    # --workers 0 means no worker process (it was taken for "the default")
    (data / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "train.txt").unlink()
    from biasloss.detection import train as detection_train

    loaders = []
    monkeypatch.setattr(detection_train, "DetectionLoader",
                        lambda *a, **kw: loaders.append(kw) or DetectionLoader(*a, **kw))
    assert main(["detect", "eval", "--checkpoint", str(run / "last.pt"), "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["map"] == line["map"] and loaders[0]["workers"] == 0
    # the val scenes, for choosing settings without the test scenes
    assert main(["detect", "eval", "--checkpoint", str(run / "last.pt"), "--workers", "1", "--test-set", "val"]) == 0
    out = capsys.readouterr().out
    assert " on 3 val images (epoch 1)" in out and re.search(r"SSD: mAP \d+\.\d\d % on", out), out


@pytest.mark.parametrize("extra,message", [
    ([], "--data-dir is required"),
    (["--data-dir", "DATA", "--batch-size", "1"], "at least 2"),
    (["--data-dir", "DATA", "--test-set", "nope"], "no PASCAL VOC"),
    (["--data-dir", "DATA", "--image-size", "16"], "--image-size/--size must be at least 32"),
    pytest.param(["--data-dir", "DATA", "--device", "cuda"], "--device cuda asked for, but CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")),
])
def test_detect_errors_are_one_line(tmp_path, capsys, extra, message):
    root = write_voc(tmp_path / "data")
    argv = ["detect", "train", "--train-set", "train", "--test-year", "2012", "--test-set", "val", "--epochs", "1",
            "--out", str(tmp_path / "run"), *[str(root) if a == "DATA" else a for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biasloss: error:") and message in err and "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
@pytest.mark.parametrize("action", ["eval", "show"])
def test_detect_device_cuda_without_cuda_is_one_line(tmp_path, capsys, action):
    """As 'train --device cuda' says it: one line, exit status 2, before the checkpoint is read."""
    argv = ["detect", action, "--checkpoint", str(tmp_path / "missing.pt"), "--device", "cuda"]
    assert main([*argv, *(["--out", str(tmp_path / "x.png")] if action == "show" else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "biasloss: error: --device cuda asked for, but CUDA is not available here"
