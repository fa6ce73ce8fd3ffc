"""Fashion-MNIST scenes: a detection dataset anyone can regenerate, in PASCAL VOC's layout.

PASCAL VOC (paper section 5.4) cannot always be downloaded. :func:`make_scenes` builds a stand-in
from Fashion-MNIST, written exactly as torchvision's :class:`~torchvision.datasets.VOCDetection`
expects, so :class:`~biasloss.detection.VOCBoxes` (with ``classes=SCENE_CLASSES``) and
:func:`~biasloss.detection.voc_map` read it unchanged::

    out/scenes.json                                  how it was made (written last)
    out/VOCdevkit/VOC2007/JPEGImages/<id>.jpg        RGB, size x size
    out/VOCdevkit/VOC2007/Annotations/<id>.xml       VOC XML, 1-based inclusive boxes
    out/VOCdevkit/VOC2007/ImageSets/Main/{train,val,trainval,test}.txt

Each scene is a smooth random colour gradient with low-frequency blotches, a few faint
unannotated distractors (small crops of other garments, thin strokes), 1-4 garments scaled to a
side of 3/16 to 1/2 of the image and tinted, placed so that no two boxes overlap by more than
IoU 0.3 (or cover more than half of the smaller one), then pixel noise. A box is the tight box
of the garment's pasted pixels, not of its 28 x 28 frame. Train and val scenes take garments (and
distractors) only from Fashion-MNIST's train split, test scenes only from its test split; each
object's XML records its source image (``<fashion_mnist><split>``, ``<index>``). The val scenes
are for choosing settings without looking at the test scenes: other compositions of the same
garment pool as the train scenes (a garment can recur, in another colour, size and place), so
their mAP ranks settings but runs a little above the test scenes'.

Scene ``i`` of a split depends only on ``(seed, split, i, size)``: the same arguments give
byte-identical files (for the same numpy and Pillow), and a larger count extends the smaller
set. ("VOC2007" because torchvision accepts only the years 2007 to 2012.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from biasloss.data import ArrayData, load_arrays
from biasloss.errors import InputError, InputTypeError, OutputError

__all__ = ["SCENE_CLASSES", "Scene", "make_scenes", "render_scene"]

SCENE_CLASSES = (
    "__background__", "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)  # Fashion-MNIST's labels 0..9 are 1..10 here

_VERSION = 1  # bump whenever a scene's pixels or annotations change
_YEAR = "2007"
_SPLITS = ("train", "test", "val")  # the order seeds the scenes: do not change it
_GARMENTS = {"train": "train", "val": "train", "test": "test"}  # the Fashion-MNIST split each draws from
_JPEG_QUALITY = 90
_MIN_SIZE, _MAX_SIZE = 48, 512
_SIDE = (3 / 16, 1 / 2)  # garment side as a fraction of the image side: 24..64 px at 128
_OBJECTS = (1, 4)
_MAX_IOU = 0.3  # and at most half of the smaller box covered
_TRIES = 25  # placements tried per garment before it is left out


@dataclass(frozen=True)
class Scene:
    """One scene before JPEG encoding.

    ``image`` is uint8 (H, W, 3); ``boxes`` int64 (N, 4) xyxy, 0-based with exclusive ends
    (torchvision's convention: ``x1 - x0`` is the width in pixels); ``labels`` int64 (N,) in 1..10;
    ``masks`` bool (N, H, W), each garment's pixels before later garments cover any of them;
    ``sources`` int64 (N,), the garments' indices in the scene's Fashion-MNIST split.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    sources: np.ndarray


def _sides(size: int) -> tuple[int, int]:
    return round(size * _SIDE[0]), round(size * _SIDE[1])


def _resize(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """A float32 (h, w) array resized bilinearly (PIL's float mode)."""
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))


def _blend(canvas: np.ndarray, x: int, y: int, alpha: np.ndarray, colour: np.ndarray) -> None:
    """``canvas[y:, x:] = (1 - alpha) * canvas + alpha * colour`` over ``alpha``'s extent, in place."""
    h, w = alpha.shape
    region = canvas[y:y + h, x:x + w]
    region += alpha[..., None] * (colour.astype(np.float32) - region)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * math.pi)
    c0, c1 = rng.uniform(30, 225, (2, 3)).astype(np.float32)
    coords = np.linspace(0, 1, size, dtype=np.float32)
    t = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = c0 + (c1 - c0) * t[..., None]
    blotches = rng.normal(0, 14, (3, 4, 4))
    return image + np.stack([_resize(b, size, size) for b in blotches], axis=-1)


def _distractors(canvas: np.ndarray, rng: np.random.Generator, pool: np.ndarray) -> None:
    """Faint pieces of garments (at most about half a side of one) and thin strokes, unannotated."""
    size = canvas.shape[0]
    for _ in range(rng.integers(1, 4)):
        g = pool[rng.integers(len(pool))]
        ch, cw = rng.integers(8, 15, 2)
        y, x = rng.integers(0, 28 - ch + 1), rng.integers(0, 28 - cw + 1)
        scale = rng.uniform(0.8, 2.0) * size / 128
        h, w = max(2, round(ch * scale)), max(2, round(cw * scale))
        alpha = _resize(g[y:y + ch, x:x + cw] / 255.0, w, h).clip(0, 1) * rng.uniform(0.12, 0.25)
        _blend(canvas, rng.integers(0, size - w + 1), rng.integers(0, size - h + 1), alpha, rng.uniform(0, 255, 3))
    for _ in range(rng.integers(1, 4)):
        layer = Image.new("L", (size, size))
        points = [tuple(p) for p in rng.uniform(0, size, (int(rng.integers(2, 5)), 2)).tolist()]
        ImageDraw.Draw(layer).line(points, fill=255, width=int(rng.integers(1, 4)))
        strength, colour = rng.uniform(0.1, 0.22), rng.uniform(0, 255, 3)
        box = layer.getbbox()
        if box:  # blend only where the stroke is
            alpha = np.asarray(layer.crop(box), dtype=np.float32) * (strength / 255)
            _blend(canvas, box[0], box[1], alpha, colour)


def _garment(g: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(value, alpha) of a garment scaled to side x side: value in [0, 1] relative to its brightest
    pixel, cut below 0.1; alpha ramps to opaque at 0.3. The pasted pixels are ``alpha > 0``."""
    v = _resize(g, side, side)
    v = v / max(float(v.max()), 1e-6)
    v[v < 0.1] = 0
    return v, np.minimum(v / 0.3, 1)


def _overlaps(box: np.ndarray, others: list[np.ndarray]) -> bool:
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        a, b = (box[2] - box[0]) * (box[3] - box[1]), (o[2] - o[0]) * (o[3] - o[1])
        if inter / (a + b - inter) > _MAX_IOU or inter / min(a, b) > 0.5:
            return True
    return False


def render_scene(data: ArrayData, split: str, index: int, *, size: int = 128, seed: int = 0) -> Scene:
    """Scene ``index`` of ``split`` ("train", "val" or "test"), drawing garments from ``data``'s
    train split (train and val scenes) or test split (:func:`biasloss.data.load_arrays` of
    ``"fashion-mnist"``) with a generator seeded by ``(seed, split, index)``. Arguments are those
    :func:`make_scenes` validated."""
    from_train = _GARMENTS[split] == "train"
    images = data.train_images if from_train else data.test_images
    labels = data.train_labels if from_train else data.test_labels
    pool = images.numpy()[..., 0]
    rng = np.random.default_rng([seed, _SPLITS.index(split), index])
    canvas = _background(rng, size)
    _distractors(canvas, rng, pool)
    lo, hi = _sides(size)
    boxes: list[np.ndarray] = []
    masks, sources = [], []
    for _ in range(rng.integers(_OBJECTS[0], _OBJECTS[1] + 1)):
        source = int(rng.integers(len(pool)))
        for _ in range(_TRIES):
            side = int(rng.integers(lo, hi + 1))
            value, alpha = _garment(pool[source], side)
            rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
            x, y = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            box = np.array([x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1], dtype=np.int64)
            if not _overlaps(box, boxes):
                break
        else:
            continue
        under = canvas[box[1]:box[3], box[0]:box[2]].reshape(-1, 3).mean(0)
        tints = rng.uniform(0, 255, (4, 3)).astype(np.float32)
        tint = tints[np.argmax(((tints - under) ** 2).sum(1))]  # the candidate farthest from what lies below
        _blend(canvas, x, y, alpha, tint * (0.45 + 0.55 * value)[..., None])
        mask = np.zeros((size, size), dtype=bool)
        mask[y:y + side, x:x + side] = alpha > 0
        boxes.append(box)
        masks.append(mask)
        sources.append(source)
    canvas += 14 * (rng.random(canvas.shape, dtype=np.float32) - 0.5)  # uniform noise, sd 4
    src = np.array(sources, dtype=np.int64)
    return Scene(
        image=np.rint(canvas).clip(0, 255).astype(np.uint8),
        boxes=np.stack(boxes).reshape(-1, 4),
        labels=labels.numpy()[src] + 1,
        masks=np.stack(masks).reshape(-1, size, size),
        sources=src,
    )


def _annotation(name: str, split: str, scene: Scene) -> str:
    size = scene.image.shape[0]
    objects = "".join(
        f"\t<object>\n\t\t<name>{SCENE_CLASSES[label]}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n"
        # VOC: 1-based, inclusive corners
        f"\t\t<bndbox>\n\t\t\t<xmin>{x0 + 1}</xmin>\n\t\t\t<ymin>{y0 + 1}</ymin>\n"
        f"\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n"
        f"\t\t<fashion_mnist>\n\t\t\t<split>{_GARMENTS[split]}</split>\n"
        f"\t\t\t<index>{source}</index>\n\t\t</fashion_mnist>\n"
        f"\t</object>\n"
        for (x0, y0, x1, y1), label, source in zip(scene.boxes.tolist(), scene.labels.tolist(), scene.sources.tolist())
    )
    return (
        f"<annotation>\n\t<folder>VOC{_YEAR}</folder>\n\t<filename>{name}.jpg</filename>\n"
        f"\t<source>\n\t\t<database>biasloss Fashion-MNIST scenes v{_VERSION}</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{size}</width>\n\t\t<height>{size}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        f"\t<segmented>0</segmented>\n{objects}</annotation>\n"
    )


def _fingerprint(data: ArrayData) -> str:
    h = hashlib.sha256()
    for t in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise InputError(f"{name} must be {bound}, got {value}")


def _same_dataset(a: dict, b: dict) -> bool:
    params = [{"val": 0} | info.get("params", {}) for info in (a, b)]  # datasets before val scenes have none
    return params[0] == params[1] and all(a.get(k) == b.get(k) for k in ("dataset", "version", "fashion_mnist_sha256"))


def make_scenes(
    out: str | os.PathLike,
    *,
    train: int = 10000,
    val: int = 1000,
    test: int = 1000,
    size: int = 128,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> Path:
    """Write the Fashion-MNIST scenes dataset (see the module doc) under ``out`` and return it.

    Defaults: 10,000 train / 1000 val / 1000 test scenes of 128 x 128 px. At 128 px the garments
    span 24-64 px, so a 28 px Fashion-MNIST image is scaled by 0.86-2.3 and keeps its detail (at
    96 px the smallest would be shrunk to 18 px); SSD resizes to its input size either way. 10,000
    train scenes hold about 25,000 boxes, 2,500 per class (a 20-minute training run sees each
    scene only three or four times), and 1000 val or test scenes about 2,500, 250 per class for
    each AP; all of it generates in under a minute of one CPU core and takes about 85 MB.

    ``out`` must be new or an empty directory: the scenes are written into a temporary
    directory beside it and renamed to ``out`` when complete, so an interrupted run leaves no
    ``out``. If ``out`` already holds the same dataset (same version, parameters and
    Fashion-MNIST files) it is returned as it is; any other content raises ``ValueError``.
    ``data_dir`` is where Fashion-MNIST is looked for (:func:`biasloss.data.load_arrays`).
    """
    for name, value, minimum in (("train", train, 1), ("val", val, 0), ("test", test, 1), ("seed", seed, 0)):
        _check_int(name, value, minimum)
    _check_int("size", size, _MIN_SIZE, _MAX_SIZE)  # garment sides 3/16..1/2 of it: at least 9 px
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a directory")
    data = load_arrays("fashion-mnist", data_dir)
    info = {
        "dataset": "biasloss Fashion-MNIST scenes",
        "version": _VERSION,
        "params": {"train": int(train), "val": int(val), "test": int(test), "size": int(size), "seed": int(seed)},
        "fashion_mnist_sha256": _fingerprint(data),
        "classes": list(SCENE_CLASSES),
        "voc_year": _YEAR,
        "jpeg": {"quality": _JPEG_QUALITY, "subsampling": "4:4:4"},
        "garment_side_px": list(_sides(size)),
        "objects_per_scene": list(_OBJECTS),
        "max_iou": _MAX_IOU,
    }
    if out.is_dir():
        existing = out / "scenes.json"
        if existing.is_file():
            try:
                old = json.loads(existing.read_text())
            except ValueError:
                raise InputError(f"{existing} is not valid JSON: an unfinished or damaged dataset; delete {out}") \
                    from None
            if _same_dataset(old, info):
                return out
            raise InputError(f"{out} holds a different scenes dataset (version {old.get('version')}, "
                             f"{old.get('params')}); choose another --out or delete it")
        if any(out.iterdir()):
            raise InputError(f"{out} is not empty and holds no scenes dataset; choose a new or empty directory")
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        base = tmp / "VOCdevkit" / f"VOC{_YEAR}"
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (base / sub).mkdir(parents=True)
        ids: dict[str, list[str]] = {}
        boxes: dict[str, int] = {}
        for split, count in zip(_SPLITS, (train, test, val)):
            width = max(6, len(str(count - 1)))
            ids[split], boxes[split] = [], 0
            for i in range(count):
                name = f"{split}_{i:0{width}d}"
                scene = render_scene(data, split, i, size=size, seed=seed)
                Image.fromarray(scene.image).save(base / "JPEGImages" / f"{name}.jpg", quality=_JPEG_QUALITY,
                                                  subsampling=0)
                (base / "Annotations" / f"{name}.xml").write_text(_annotation(name, split, scene))
                ids[split].append(name)
                boxes[split] += len(scene.labels)
        ids["trainval"] = ids["train"] + ids["val"]
        for image_set, names in ids.items():
            (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{n}\n" for n in names))
        info["objects"] = boxes
        (tmp / "scenes.json").write_text(json.dumps(info, indent=1) + "\n")  # last: the dataset is complete
        if out.is_dir():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno is not None:  # the file system's answer: full, read-only, ...
            raise OutputError(e.errno, f"cannot write {out}: {e.strerror or e}") from None
        raise
    return out
