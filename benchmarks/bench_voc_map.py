"""VOC mAP at VOC2007-test volume: how long ``biasloss.detection.voc_map`` takes.

VOC2007 test has 4,952 images and 12,032 objects (2.4 an image) in 20 classes; a detector
evaluated there keeps up to 200 detections an image, about a million in all. This script makes
that many: true boxes at random, a third of the detections jittered copies of them (true
positives, duplicates and wrong classes), the rest random boxes, random scores. It prints the
machine, the command and the minimum and median of ``--repeats`` evaluations for each metric.

    python benchmarks/bench_voc_map.py                    # 4952 images x 200 detections
    python benchmarks/bench_voc_map.py --images 500 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from biasloss.detection import voc_map


def make_volume(images: int, per_image: int, num_classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    dets, gts = [], []
    for _ in range(images):
        m = 1 + int(torch.randint(0, 4, (1,), generator=gen))
        xy = torch.rand(m, 2, generator=gen) * 300
        boxes = torch.cat([xy, xy + 20 + torch.rand(m, 2, generator=gen) * 150], 1)
        labels = torch.randint(1, num_classes, (m,), generator=gen)
        gts.append({"boxes": boxes, "labels": labels, "difficult": torch.rand(m, generator=gen) < 0.1})
        near = per_image // 3
        pick = torch.randint(0, m, (near,), generator=gen)
        d_near = boxes[pick] + torch.randn(near, 4, generator=gen) * 10
        d_labels = torch.where(torch.rand(near, generator=gen) < 0.7, labels[pick],
                               torch.randint(1, num_classes, (near,), generator=gen))
        far = per_image - near
        rxy = torch.rand(far, 2, generator=gen) * 400
        d_far = torch.cat([rxy, rxy + 5 + torch.rand(far, 2, generator=gen) * 100], 1)
        d_boxes = torch.cat([d_near, d_far])
        d_boxes = torch.cat([d_boxes[:, :2], torch.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 1)], 1)
        dets.append({"boxes": d_boxes, "scores": torch.rand(per_image, generator=gen),
                     "labels": torch.cat([d_labels, torch.randint(1, num_classes, (far,), generator=gen)])})
    return dets, gts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4952)
    parser.add_argument("--per-image", type=int, default=200)
    parser.add_argument("--classes", type=int, default=21, help="with background (VOC: 21)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dets, gts = make_volume(args.images, args.per_image, args.classes)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"volume: {args.images} images, {args.images * args.per_image:,} detections, "
          f"{sum(len(g['labels']) for g in gts):,} true boxes, {args.classes - 1} classes")
    for name, use_07 in (("11-point (VOC2007)", True), ("exact area (VOC2010+)", False)):
        times, value = [], 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            value = voc_map(dets, gts, args.classes, use_07_metric=use_07)["map"]
            times.append(time.perf_counter() - start)
        print(f"{name:24s} mAP {value:.4f}  min {min(times):.2f} s  median {statistics.median(times):.2f} s "
              f"over {args.repeats}")


if __name__ == "__main__":
    main()
