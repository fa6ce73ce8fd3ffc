"""PASCAL VOC detection data in torchvision's layout (``VOCdevkit/VOC<year>/...``).

Reads with :class:`torchvision.datasets.VOCDetection` and returns ``(image, target)``: a float
image in [0, 1] and ``{"boxes": (N, 4) xyxy pixels, "labels": (N,) in 1..20, "difficult": (N,)}``.
Other class lists in the same layout (the Fashion-MNIST scenes of :mod:`.scenes`) are read with
``classes=``: a name's label is its index there.
Training augmentation (``augment``): ``"ssd"``, that of torchvision's SSD reference
(``transforms.v2`` with box support): photometric distortion, zoom out, IoU crop, horizontal flip;
``"flip"``: horizontal flip only. The SSD model resizes to its input
size itself. Training drops ``difficult`` boxes, as the VOC protocol does; evaluation keeps them
flagged so the metric can ignore them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.datasets import VOCDetection
from torchvision.transforms import v2

from biasloss.errors import DatasetNotFoundError, InputError, InputTypeError

__all__ = ["AUGMENTATIONS", "VOC_CLASSES", "VOCBoxes", "collate"]

VOC_CLASSES = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


#: The training augmentations ``VOCBoxes(augment=...)`` knows.
AUGMENTATIONS = ("ssd", "flip")


def _train_transform(augment: str) -> v2.Transform:
    if augment == "flip":
        return v2.Compose([v2.RandomHorizontalFlip(p=0.5), v2.ToDtype(torch.float32, scale=True)])
    return v2.Compose([
        v2.RandomPhotometricDistort(p=1.0),
        v2.RandomZoomOut(fill={tv_tensors.Image: (123, 117, 104), "others": 0}),
        v2.RandomIoUCrop(),
        v2.RandomHorizontalFlip(p=0.5),
        v2.SanitizeBoundingBoxes(labels_getter=lambda inputs: (inputs[1]["labels"], inputs[1]["difficult"])),
        v2.ToDtype(torch.float32, scale=True),
    ])


class VOCBoxes(torch.utils.data.Dataset):
    """One VOC split as ``(image, target)`` pairs (see the module doc); ``classes[i]`` is the XML
    name of label ``i`` (index 0 the background); ``augment`` one of :data:`AUGMENTATIONS`
    (training only)."""

    def __init__(self, root: str | os.PathLike, year: str, image_set: str, *, train: bool,
                 classes: Sequence[str] = VOC_CLASSES, augment: str = "ssd") -> None:
        if augment not in AUGMENTATIONS:
            raise InputError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
            raise InputTypeError(f"classes must be a sequence of class names, got {classes!r}")
        if len(set(classes)) != len(classes):
            raise InputError(f"classes must be distinct, got {list(classes)}")
        root = Path(root)
        base = root / "VOCdevkit" / f"VOC{year}"
        if not (base / "ImageSets" / "Main" / f"{image_set}.txt").is_file():
            raise DatasetNotFoundError(
                f"no PASCAL VOC {year} {image_set!r} split under {base} (looked for ImageSets/Main/{image_set}.txt); "
                f"pass --data-dir to the folder holding VOCdevkit/ (torchvision's VOCDetection layout)"
            )
        self.voc = VOCDetection(str(root), year=year, image_set=image_set)
        self.train = train
        self.classes = tuple(classes)
        self._index = {name: i for i, name in enumerate(self.classes)}
        self.transform = _train_transform(augment) if train else v2.ToDtype(torch.float32, scale=True)

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, annotation = self.voc[index]
        objects = annotation["annotation"].get("object", [])
        objects = objects if isinstance(objects, list) else [objects]
        boxes, labels, difficult = [], [], []
        for obj in objects:
            if obj["name"] not in self._index:
                raise InputError(f"{self.voc.annotations[index]}: unknown class {obj['name']!r} "
                                 f"(the classes given: {', '.join(self.classes[1:])})")
            b = obj["bndbox"]
            # VOC boxes are 1-based inclusive pixel indices; torchvision's are 0-based xyxy
            boxes.append([float(b["xmin"]) - 1, float(b["ymin"]) - 1, float(b["xmax"]), float(b["ymax"])])
            labels.append(self._index[obj["name"]])
            difficult.append(str(obj.get("difficult", "0")) == "1")
        box_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        label_t = torch.tensor(labels, dtype=torch.int64)
        difficult_t = torch.tensor(difficult, dtype=torch.bool)
        if self.train:
            box_t, label_t, difficult_t = box_t[~difficult_t], label_t[~difficult_t], difficult_t[~difficult_t]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(image.convert("RGB")))
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(box_t, format="XYXY", canvas_size=tuple(image.shape[-2:])),
            "labels": label_t,
            "difficult": difficult_t,
        }
        image, target = self.transform(image, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        return image.as_subclass(torch.Tensor), target


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """Detection batches are lists: images differ in size until the model resizes them."""
    images, targets = zip(*batch)
    return list(images), list(targets)
