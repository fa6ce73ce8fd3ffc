"""Small PASCAL VOC trees in torchvision's VOCDetection layout, for the detection tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("dog", "person", "car")


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
                    f"<object><name>{CLASSES[(k + j) % 3]}</name><pose>Unspecified</pose><truncated>0</truncated>"
                    f"<difficult>{1 if (k == 3 and j == 1) else 0}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
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
