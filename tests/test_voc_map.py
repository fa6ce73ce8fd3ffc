"""VOC mAP against cases worked out by hand and against an evaluator written the way the Python
reference evaluators (py-faster-rcnn's ``voc_eval``, mmdetection's ``eval_map``) do it: one
detection at a time, float64, thresholds from numpy's ``arange(0, 1.1, 0.1)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biasloss.detection import voc_map


def _alternating(n: int):
    """n boxes of class 1 in a row; n hits and n - 1 misses interleaved by score, hit first.
    The i-th hit is the (2i - 1)-th detection: recall i/n, precision i/(2i - 1)."""
    gt_boxes = [[60.0 * k, 0, 60.0 * k + 50, 50] for k in range(n)]
    miss_boxes = [[0, 2000.0 + 30 * k, 20, 2020.0 + 30 * k] for k in range(n - 1)]
    ranks = list(range(2 * n - 1))  # hit i at rank 2i, miss i at rank 2i + 1 (0-based)
    scores = [1.0 - r / (2 * n) for r in ranks[0::2]] + [1.0 - r / (2 * n) for r in ranks[1::2]]
    gt = [{"boxes": torch.tensor(gt_boxes), "labels": torch.ones(n, dtype=torch.long)}]
    det = [{"boxes": torch.tensor(gt_boxes + miss_boxes), "scores": torch.tensor(scores),
            "labels": torch.ones(2 * n - 1, dtype=torch.long)}]
    return det, gt


# For each threshold t = k * 0.1 (float64), the first hit whose recall i/n reaches it; the best
# precision at recall >= t is then i/(2i - 1) (later points are lower). Recalls 0.3, 0.6 and 0.7
# are exactly decimal and fall just short of 3 * 0.1, 6 * 0.1 and 7 * 0.1.
FIRST_HIT = {
    5: [1, 1, 1, 2, 2, 3, 4, 4, 4, 5, 5],  # recall 3/5 = 0.6 misses t = 0.6000000000000001
    10: [1, 1, 2, 4, 4, 5, 7, 8, 8, 9, 10],  # 3/10, 6/10, 7/10 miss their thresholds
    20: [1, 2, 4, 7, 8, 10, 13, 15, 16, 18, 20],  # 6/20, 12/20, 14/20 miss theirs
}


@pytest.mark.parametrize("n", [5, 10, 20])
def test_eleven_point_by_hand(n):
    det, gt = _alternating(n)
    expected = sum(i / (2 * i - 1) for i in FIRST_HIT[n]) / 11
    assert voc_map(det, gt, 2)["map"] == pytest.approx(expected, abs=1e-12)


def test_eleven_point_issue_case():
    det, gt = _alternating(5)
    # the reference evaluators' value; exact decimal thresholds would give 0.707937 and
    # float32 linspace thresholds 0.667532
    assert voc_map(det, gt, 2)["map"] == pytest.approx(0.705339, abs=1e-6)
    # exact area: recall steps of 1/5 at precisions 1, 2/3, 3/5, 4/7, 5/9
    area = (1 + 2 / 3 + 3 / 5 + 4 / 7 + 5 / 9) / 5
    assert voc_map(det, gt, 2, use_07_metric=False)["map"] == pytest.approx(area, abs=1e-12)


def _reference_map(dets, gts, num_classes, use_07_metric, thr=0.5, difficult_rule=True, duplicate_rule=True):
    """Sequential evaluator in the reference evaluators' manner (float64 numpy throughout).
    ``difficult_rule=False`` counts difficult boxes as ordinary positives; ``duplicate_rule=False``
    skips (neither TP nor FP) a detection whose best box is already taken: the two rules switched
    off, to show that a test's scenes exercise them."""
    aps = []
    for c in range(1, num_classes):
        records, npos = [], 0
        for g in gts:
            m = (g["labels"] == c).numpy()
            diff = g.get("difficult", torch.zeros(len(m), dtype=torch.bool)).numpy()[m] & difficult_rule
            records.append([g["boxes"].double().numpy()[m], diff, np.zeros(int(m.sum()), bool)])
            npos += int((~diff).sum())
        image, conf, boxes = [], [], []
        for i, d in enumerate(dets):
            for k in np.nonzero((d["labels"] == c).numpy())[0]:
                image.append(i)
                conf.append(float(d["scores"][k]))
                boxes.append(d["boxes"][k].double().numpy())
        tp, fp = np.zeros(len(conf)), np.zeros(len(conf))
        for pos, idx in enumerate(np.argsort(-np.array(conf), kind="stable")):
            gt_boxes, diff, taken = records[image[idx]]
            b = boxes[idx]
            ovmax, jmax = -np.inf, -1
            if len(gt_boxes):
                iw = np.maximum(np.minimum(gt_boxes[:, 2], b[2]) - np.maximum(gt_boxes[:, 0], b[0]), 0)
                ih = np.maximum(np.minimum(gt_boxes[:, 3], b[3]) - np.maximum(gt_boxes[:, 1], b[1]), 0)
                inter = iw * ih
                union = (b[2] - b[0]) * (b[3] - b[1]) + (gt_boxes[:, 2] - gt_boxes[:, 0]) * (
                    gt_boxes[:, 3] - gt_boxes[:, 1]) - inter
                ov = inter / union
                jmax = int(np.argmax(ov))
                ovmax = ov[jmax]
            if ovmax >= thr:
                if not diff[jmax]:
                    if not taken[jmax]:
                        tp[pos], taken[jmax] = 1, True
                    elif duplicate_rule:
                        fp[pos] = 1
            else:
                fp[pos] = 1
        if npos == 0:
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if use_07_metric:
            ap = sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) for t in np.arange(0.0, 1.1, 0.1)) / 11
        else:
            mrec = np.concatenate(([0.0], rec, [1.0]))
            mpre = np.concatenate(([0.0], prec, [0.0]))
            for i in range(len(mpre) - 1, 0, -1):
                mpre[i - 1] = max(mpre[i - 1], mpre[i])
            i = np.where(mrec[1:] != mrec[:-1])[0]
            ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
        aps.append(ap)
    return float(np.mean(aps)) if aps else 0.0


def _random_scene(gen, num_classes):
    """A few true boxes (some difficult), detections near them (duplicates, wrong classes) and
    random ones; distinct scores."""
    m = int(torch.randint(0, 5, (1,), generator=gen))
    xy = torch.rand(m, 2, generator=gen) * 200
    wh = 20 + torch.rand(m, 2, generator=gen) * 80
    gt = {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, num_classes, (m,), generator=gen),
          "difficult": torch.rand(m, generator=gen) < 0.2}
    near = gt["boxes"].repeat(3, 1) + torch.randn(3 * m, 4, generator=gen) * 6
    labels = gt["labels"].repeat(3)
    labels = torch.where(torch.rand(3 * m, generator=gen) < 0.2,
                         torch.randint(1, num_classes, (3 * m,), generator=gen), labels)
    r = int(torch.randint(0, 6, (1,), generator=gen))
    rxy = torch.rand(r, 2, generator=gen) * 250
    far = torch.cat([rxy, rxy + 10 + torch.rand(r, 2, generator=gen) * 60], 1)
    boxes = torch.cat([near, far])
    boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], 1)
    det = {"boxes": boxes, "scores": torch.rand(len(boxes), generator=gen, dtype=torch.float64),
           "labels": torch.cat([labels, torch.randint(1, num_classes, (r,), generator=gen)])}
    return det, gt


@pytest.mark.parametrize("use_07_metric", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_reference_evaluator(seed, use_07_metric):
    gen = torch.Generator().manual_seed(seed)
    scenes = [_random_scene(gen, 4) for _ in range(30)]
    dets, gts = [s[0] for s in scenes], [s[1] for s in scenes]
    ours = voc_map(dets, gts, 4, use_07_metric=use_07_metric)["map"]
    reference = _reference_map(dets, gts, 4, use_07_metric)
    assert ours == pytest.approx(reference, abs=1e-9)
    # the scenes exercise both rules: without either, the reference's mAP moves well beyond 1e-9
    for rule in ("difficult_rule", "duplicate_rule"):
        assert abs(_reference_map(dets, gts, 4, use_07_metric, **{rule: False}) - reference) > 1e-3, rule


def test_no_detections_and_bad_threshold():
    det, gt = _alternating(3)
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    assert voc_map(empty, gt, 2)["map"] == 0.0
    assert voc_map(det, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], 2) == {
        "map": 0.0, "ap": {}}
    with pytest.raises(ValueError, match="iou_threshold"):
        voc_map(det, gt, 2, iou_threshold=0.0)
