"""PASCAL VOC mean average precision (the metric of the paper's Table 6).

Detections are matched to ground truth per image and class, highest score first: a detection's
match is the ground-truth box of its class it overlaps most, if that IoU is >= the threshold
(torchvision's ``box_iou``, continuous coordinates, as mmdetection's ``eval_map``); a
ground-truth box can be matched once, and a later detection whose best box is already taken is a
false positive. Boxes marked ``difficult`` count neither way: they are not among the positives,
and a detection whose best box is difficult is ignored.

AP is the area under the precision/recall curve, either the VOC2007 devkit's 11-point
interpolation (``use_07_metric=True``, what VOC2007 test results report) or the exact area under
the monotone precision envelope (VOC2010 and later). The 11-point thresholds are those of the
Python reference evaluators every published VOC2007 number comes from (py-faster-rcnn's
``voc_eval``, mmdetection's ``eval_map``): numpy's ``arange(0, 1.1, 0.1)`` in float64, whose 0.3,
0.6 and 0.7 lie just above their decimal values, so a recall of exactly 0.3, 0.6 or 0.7 does not
reach them. This module agrees with those evaluators to 1e-9.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

from biasloss.errors import InputError

__all__ = ["average_precision", "voc_map"]

# k * 0.1 in float64: numpy's arange(0, 1.1, 0.1), value for value (not the decimal 0.3, 0.6, 0.7)
_ELEVEN_POINTS = torch.tensor([k * 0.1 for k in range(11)], dtype=torch.float64)


def average_precision(recall: torch.Tensor, precision: torch.Tensor, use_07_metric: bool = True) -> float:
    """AP of one class from its recall/precision points, in descending-score order (recall
    non-decreasing); computed in float64."""
    if recall.numel() == 0:
        return 0.0
    rec, prec, zero = recall.double(), precision.double(), torch.zeros(1, dtype=torch.float64)
    if use_07_metric:
        # the best precision at recall >= t is the envelope at the first point reaching t
        envelope = torch.cat([prec.flip(0).cummax(0).values.flip(0), zero])
        first = torch.searchsorted(rec, _ELEVEN_POINTS, side="left")
        return float(envelope[first].sum()) / 11
    rec = torch.cat([zero, rec, zero + 1])
    prec = torch.cat([zero, prec, zero]).flip(0).cummax(0).values.flip(0)  # monotone envelope
    steps = torch.nonzero(rec[1:] != rec[:-1]).flatten()
    return float(((rec[steps + 1] - rec[steps]) * prec[steps + 1]).sum())


def voc_map(
    detections: Sequence[dict[str, torch.Tensor]],
    ground_truths: Sequence[dict[str, torch.Tensor]],
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> dict[str, object]:
    """Mean AP over the classes 1..num_classes-1 (0 is background) that have positives.

    ``detections[i]``: ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,) for image i;
    ``ground_truths[i]``: ``boxes``, ``labels`` and optionally ``difficult`` (bool). Returns
    ``{"map": float, "ap": {class: float}}``. Vectorised: one IoU matrix per image, no loop over
    detections (VOC2007 test's million detections take about a second).
    """
    if len(detections) != len(ground_truths):
        raise InputError(f"{len(detections)} detection sets for {len(ground_truths)} images")
    if not 0.0 < iou_threshold <= 1.0:
        raise InputError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    labels, scores, gt_index, matched = [], [], [], []  # per detection, over all images
    gt_labels, gt_difficult = [], []  # per ground-truth box, over all images
    offset = 0
    for det, gt in zip(detections, ground_truths):
        g_labels = gt["labels"].long()
        g_difficult = gt.get("difficult", torch.zeros_like(g_labels, dtype=torch.bool)).bool()
        d_labels = det["labels"].long()
        gt_labels.append(g_labels)
        gt_difficult.append(g_difficult)
        if len(d_labels):
            if len(g_labels):
                iou = box_iou(det["boxes"].float(), gt["boxes"].float())
                iou = iou.masked_fill(d_labels[:, None] != g_labels[None, :], -1.0)  # own class only
                best, j = iou.max(1)
            else:
                best, j = torch.full(d_labels.shape, -1.0), torch.zeros_like(d_labels)
            labels.append(d_labels)
            scores.append(det["scores"].double())
            gt_index.append(j + offset)
            matched.append(best >= iou_threshold)
        offset += len(g_labels)

    gt_labels_all = torch.cat(gt_labels) if gt_labels else torch.zeros(0, dtype=torch.long)
    difficult_all = torch.cat(gt_difficult) if gt_difficult else torch.zeros(0, dtype=torch.bool)
    positives = torch.bincount(gt_labels_all[~difficult_all], minlength=num_classes)
    if labels:
        labels_all, scores_all = torch.cat(labels), torch.cat(scores)
        gt_all, matched_all = torch.cat(gt_index), torch.cat(matched)
        # highest score first (ties in input order); a box's true positive is its first claimant
        order = torch.sort(scores_all, descending=True, stable=True).indices
        labels_all, gt_all, matched_all = labels_all[order], gt_all[order], matched_all[order]
        ignored = torch.zeros_like(matched_all)
        ignored[matched_all] = difficult_all[gt_all[matched_all]]
        claims = matched_all & ~ignored
        rank = torch.arange(len(order))
        first = torch.full((max(offset, 1),), len(order)).scatter_reduce(
            0, gt_all[claims], rank[claims], reduce="amin")
        hit = claims & (first[gt_all] == rank)
        counted = ~ignored
    else:
        labels_all = hit = counted = torch.zeros(0, dtype=torch.long)
    ap: dict[int, float] = {}
    for cls in range(1, num_classes):
        if int(positives[cls]) == 0:
            continue
        tp = hit[(labels_all == cls) & counted.bool()].double()
        tp_cum, fp_cum = torch.cumsum(tp, 0), torch.cumsum(1 - tp, 0)
        recall = tp_cum / int(positives[cls])
        precision = tp_cum / torch.clamp(tp_cum + fp_cum, min=torch.finfo(torch.float64).eps)
        ap[cls] = average_precision(recall, precision, use_07_metric)
    return {"map": sum(ap.values()) / len(ap) if ap else 0.0, "ap": ap}
