"""The Fashion-MNIST scenes: deterministic, in VOC's layout, tight boxes, garments from the right split."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import VOCDetection

from biasloss.cli import main
from biasloss.data import load_arrays
from biasloss.detection import SCENE_CLASSES, VOCBoxes, make_scenes
from biasloss.detection import scenes as scenes_module
from biasloss.detection.scenes import render_scene

SIZE = 64
COUNTS = {"train": 6, "val": 3, "test": 4}


@pytest.fixture(scope="module")
def fmnist():
    return load_arrays("fashion-mnist")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("scenes") / "a", **COUNTS, size=SIZE, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _object_sources(root: Path, split: str, i: int) -> list[tuple[str, int]]:
    voc = VOCDetection(str(root), year="2007", image_set=split)
    objects = voc[i][1]["annotation"]["object"]
    return [(o["fashion_mnist"]["split"], int(o["fashion_mnist"]["index"])) for o in objects]


def test_same_arguments_same_bytes(dataset, tmp_path):
    again = make_scenes(tmp_path / "b", **COUNTS, size=SIZE, seed=3)
    first, second = _files(dataset), _files(again)
    assert len(first) == 2 * sum(COUNTS.values()) + 4 + 1  # jpg + xml per scene, 4 image sets, scenes.json
    assert first == second
    base = dataset / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    for split, n in COUNTS.items():
        assert (base / f"{split}.txt").read_text().split() == [f"{split}_{i:06d}" for i in range(n)]
    assert (base / "trainval.txt").read_text() == (base / "train.txt").read_text() + (base / "val.txt").read_text()
    # a val scene is not the train scene of the same number
    jpeg = "VOCdevkit/VOC2007/JPEGImages/{}_000000.jpg"
    assert first[jpeg.format("val")] != first[jpeg.format("train")]
    info = json.loads((dataset / "scenes.json").read_text())
    assert info["params"] == {**COUNTS, "size": SIZE, "seed": 3} and info["classes"] == list(SCENE_CLASSES)
    # another seed: other scenes
    other = make_scenes(tmp_path / "c", train=1, val=0, test=1, size=SIZE, seed=4)
    assert not (other / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "val.txt").read_text()
    name = "VOCdevkit/VOC2007/JPEGImages/train_000000.jpg"
    assert _files(other)[name] != first[name]


def test_the_same_dataset_is_kept_and_another_refused(dataset, tmp_path):
    info = dataset / "scenes.json"
    stamp = info.stat().st_mtime_ns
    assert make_scenes(dataset, **COUNTS, size=SIZE, seed=3) == dataset
    assert info.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="holds a different scenes dataset"):
        make_scenes(dataset, **COUNTS, size=SIZE, seed=4)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        make_scenes(tmp_path / "busy", train=1, test=1, size=SIZE)
    (tmp_path / "empty").mkdir()  # an empty directory is filled
    assert (make_scenes(tmp_path / "empty", train=1, val=0, test=1, size=SIZE) / "scenes.json").is_file()
    # a dataset written before val scenes existed (no "val" in its parameters) is one with none
    old = tmp_path / "empty" / "scenes.json"
    written = json.loads(old.read_text())
    del written["params"]["val"]
    old.write_text(json.dumps(written))
    assert make_scenes(tmp_path / "empty", train=1, val=0, test=1, size=SIZE) == tmp_path / "empty"
    with pytest.raises(ValueError, match="holds a different scenes dataset"):
        make_scenes(tmp_path / "empty", train=1, val=1, test=1, size=SIZE)


def test_an_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render_scene(*args, **kwargs)

    monkeypatch.setattr(scenes_module, "render_scene", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        make_scenes(tmp_path / "out", train=4, val=0, test=1, size=SIZE)
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary directory


def test_read_by_vocboxes_and_vocdetection(dataset, fmnist):
    jpeg = json.loads((dataset / "scenes.json").read_text())["jpeg"]
    assert jpeg["subsampling"] == "4:4:4"
    for split, n in COUNTS.items():
        voc = VOCDetection(str(dataset), year="2007", image_set=split)
        assert len(voc) == n
        image, annotation = voc[0]
        assert image.size == (SIZE, SIZE) and annotation["annotation"]["size"]["depth"] == "3"
        boxes = VOCBoxes(dataset, "2007", split, train=False, classes=SCENE_CLASSES)
        assert len(boxes) == n
        for i in range(n):
            image, target = boxes[i]
            scene = render_scene(fmnist, split, i, size=SIZE, seed=3)
            assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
            # VOC's 1-based inclusive corners come back as the scene's 0-based exclusive ones
            assert target["boxes"].tolist() == scene.boxes.astype(float).tolist()
            assert target["labels"].tolist() == scene.labels.tolist()
            assert not target["difficult"].any()
            # the JPEG is the scene's image, encoded as scenes.json says
            encoded = io.BytesIO()
            Image.fromarray(scene.image).save(encoded, "JPEG", quality=jpeg["quality"], subsampling=0)
            assert (dataset / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{split}_{i:06d}.jpg").read_bytes() \
                == encoded.getvalue()
    train = VOCBoxes(dataset, "2007", "trainval", train=True, classes=SCENE_CLASSES)
    image, target = train[0]  # the SSD augmentation runs on it
    assert len(target["boxes"]) == len(target["labels"])
    # VOC's own class list does not know the garments: the file and the name are named
    with pytest.raises(ValueError, match=r"test_000000\.xml: unknown class '[a-z_]+'"):
        VOCBoxes(dataset, "2007", "test", train=False)[0]


def test_boxes_are_tight_and_inside(dataset, fmnist):
    n_objects = 0
    for split, n in COUNTS.items():
        pool = (fmnist.test_images if split == "test" else fmnist.train_images).numpy()[..., 0]
        for i in range(n):
            scene = render_scene(fmnist, split, i, size=SIZE, seed=3)
            assert scene.image.shape == (SIZE, SIZE, 3) and scene.image.dtype == np.uint8
            assert 1 <= len(scene.boxes) <= 4 and len(scene.masks) == len(scene.boxes)
            assert ((1 <= scene.labels) & (scene.labels <= 10)).all()
            for (x0, y0, x1, y1), mask, source in zip(scene.boxes.tolist(), scene.masks, scene.sources):
                assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
                # the garment's pixels lie in the box and reach each of its edges
                assert mask.sum() == mask[y0:y1, x0:x1].sum() > 0
                assert mask[y0].any() and mask[y1 - 1].any() and mask[:, x0].any() and mask[:, x1 - 1].any()
                # the box is the garment's extent, not its square 28 x 28 frame: the source's own tight
                # box (pixels above a tenth of its brightest), scaled by one factor within the scale
                # range, gives it to within 2 source pixels per side and 1 pixel of rounding
                g = pool[source].astype(float)
                rows, cols = np.flatnonzero((g > 0.1 * g.max()).any(1)), np.flatnonzero((g > 0.1 * g.max()).any(0))
                gw, gh = cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
                low = max((x1 - x0 - 1) / (gw + 2), (y1 - y0 - 1) / (gh + 2), 12 / 28)
                high = min((x1 - x0 + 1) / max(gw - 2, 0.5), (y1 - y0 + 1) / max(gh - 2, 0.5), 32 / 28)
                assert low <= high, (split, i, gw, gh, x1 - x0, y1 - y0)
                n_objects += 1
    info = json.loads((dataset / "scenes.json").read_text())
    assert n_objects == sum(info["objects"].values())


def test_garments_come_from_their_own_split(dataset, fmnist):
    for split, n in COUNTS.items():
        garments = "test" if split == "test" else "train"  # val scenes are made of train garments
        labels = fmnist.test_labels if split == "test" else fmnist.train_labels
        for i in range(n):
            scene = render_scene(fmnist, split, i, size=SIZE, seed=3)
            recorded = _object_sources(dataset, split, i)
            assert recorded == [(garments, int(s)) for s in scene.sources]
            assert scene.labels.tolist() == [int(labels[s]) + 1 for s in scene.sources]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_splits_do_not_mix_on_data_that_tells_them_apart(tmp_path):
    # a stand-in Fashion-MNIST whose train garments are labelled 0..4 and test garments 5..9
    rng = np.random.default_rng(0)
    for split, n, first_label in (("train", 30, 0), ("t10k", 20, 5)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for k in range(n):
            y, x = rng.integers(0, 10, 2)
            images[k, y:y + rng.integers(8, 18), x:x + rng.integers(8, 18)] = 200
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", images)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", first_label + np.arange(n) % 5)
    out = make_scenes(tmp_path / "scenes", train=8, val=8, test=8, size=SIZE, data_dir=tmp_path)
    for split, allowed in (("train", range(1, 6)), ("val", range(1, 6)), ("test", range(6, 11))):
        data = VOCBoxes(out, "2007", split, train=False, classes=SCENE_CLASSES)
        labels = torch.cat([data[i][1]["labels"] for i in range(len(data))])
        assert len(labels) >= 8 and set(labels.tolist()) <= set(allowed)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"train": 0}, ValueError, "train must be at least 1"),
    ({"test": -2}, ValueError, "test must be at least 1"),
    ({"val": -1}, ValueError, "val must be at least 0"),
    ({"size": 32}, ValueError, "size must be between 48 and 512"),
    ({"size": 4096}, ValueError, "size must be between 48 and 512"),
    ({"seed": -1}, ValueError, "seed must be at least 0"),
    ({"train": 2.5}, TypeError, "train must be an int"),
])
def test_bad_arguments(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        make_scenes(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli(dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["detect", "make-scenes", "--out", str(out), "--train", "2", "--val", "1", "--test", "1", "--size",
            str(SIZE), "--seed", "3"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("wrote: 2 train scenes") and ", 1 val scenes (" in line and str(out) in line
    assert "\n" not in line
    # scene i depends on (seed, split, i, size) only: the smaller set is the start of the larger
    small, large = _files(out), _files(dataset)
    assert [k for k in small if k.endswith((".jpg", ".xml"))] and all(
        small[k] == large[k] for k in small if k.endswith((".jpg", ".xml")))
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("already there")
    code = main(["detect", "make-scenes", "--out", str(tmp_path / "bad"), "--size", "20"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("biasloss: error: ")
    assert "size must be between 48 and 512, got 20" in err
    Image.new("RGB", (4, 4)).save(tmp_path / "file.png")
    assert main(["detect", "make-scenes", "--out", str(tmp_path / "file.png"), "--train", "1", "--test", "1"]) == 2
    assert "is not a directory" in capsys.readouterr().err
