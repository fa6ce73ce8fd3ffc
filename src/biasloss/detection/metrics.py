"""PASCAL VOC mean average precision (the metric of the paper's Table 6).

Detections are matched to ground truth per image and class, highest score first, at IoU >= 0.5;
a ground-truth box can be matched once (later matches are false positives). Boxes marked
``difficult`` count neither way: they are not in the number of positives, and a detection that
matches one is ignored. AP is the area under the precision/recall curve: the 11-point
interpolation of the VOC2007 devkit (``use_07_metric=True``, what VOC2007 test results report) or
the exact area under the monotone envelope (VOC2010 and later).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

__all__ = ["average_precision", "voc_map"]


def average_precision(recall: torch.Tensor, precision: torch.Tensor, use_07_metric: bool = True) -> float:
    """AP of one class from its recall/precision points (in descending-score order)."""
    if recall.numel() == 0:
        return 0.0
    if use_07_metric:
        total = 0.0
        for t in torch.linspace(0, 1, 11).tolist():
            above = precision[recall >= t - 1e-12]
            total += float(above.max()) if above.numel() else 0.0
        return total / 11
    rec = torch.cat([torch.zeros(1, dtype=recall.dtype), recall, torch.ones(1, dtype=recall.dtype)])
    prec = torch.cat([torch.zeros(1, dtype=precision.dtype), precision, torch.zeros(1, dtype=precision.dtype)])
    prec = torch.flip(torch.cummax(torch.flip(prec, [0]), 0).values, [0])  # monotone envelope
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
    ``{"map": float, "ap": {class: float}}``.
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection sets for {len(ground_truths)} images")
    ap: dict[int, float] = {}
    for cls in range(1, num_classes):
        scores, hits, positives = [], [], 0
        for det, gt in zip(detections, ground_truths):
            g = gt["labels"] == cls
            g_boxes = gt["boxes"][g].float()
            difficult = gt.get("difficult", torch.zeros_like(gt["labels"], dtype=torch.bool))[g].bool()
            positives += int((~difficult).sum())
            d = det["labels"] == cls
            d_boxes, d_scores = det["boxes"][d].float(), det["scores"][d].float()
            order = torch.argsort(d_scores, descending=True)
            d_boxes, d_scores = d_boxes[order], d_scores[order]
            taken = torch.zeros(len(g_boxes), dtype=torch.bool)
            iou = box_iou(d_boxes, g_boxes) if len(g_boxes) and len(d_boxes) else None
            for k in range(len(d_boxes)):
                hit = 0.0
                if iou is not None:
                    best, j = iou[k].max(0)
                    if best >= iou_threshold:
                        if difficult[j]:
                            continue  # neither a true nor a false positive
                        if not taken[j]:
                            taken[j], hit = True, 1.0
                scores.append(float(d_scores[k]))
                hits.append(hit)
        if positives == 0:
            continue
        order = torch.argsort(torch.tensor(scores, dtype=torch.float64), descending=True, stable=True)
        tp = torch.tensor(hits, dtype=torch.float64)[order]
        tp_cum, fp_cum = torch.cumsum(tp, 0), torch.cumsum(1 - tp, 0)
        recall = tp_cum / positives
        precision = tp_cum / torch.clamp(tp_cum + fp_cum, min=1e-12)
        ap[cls] = average_precision(recall, precision, use_07_metric)
    return {"map": sum(ap.values()) / len(ap) if ap else 0.0, "ap": ap}
