"""Data layer: the folder datasets (ImageNet as ImageFolder, Food-101 in torchvision's layout).

The tests write tiny JPEG trees in exactly those layouts and read them through build_loaders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_imagenet, write_jpeg

from biasloss.data import (
    AugmentConfig,
    DatasetCorruptError,
    DatasetNotFoundError,
    FolderLoader,
    build_loaders,
    get_dataset_spec,
)
from biasloss.data import eval_transform


def write_food101(root: Path, classes=("apple_pie", "baby_back_ribs", "baklava"), n_train=3, n_test=2) -> Path:
    base = root / "food-101"
    meta = {"train": {}, "test": {}}
    seed = 0
    for c in classes:
        ids = [str(100000 + 7 * k + len(c)) for k in range(n_train + n_test)]
        for k, i in enumerate(ids):
            write_jpeg(base / "images" / c / f"{i}.jpg", seed)
            seed += 1
        meta["train"][c] = [f"{c}/{i}" for i in ids[:n_train]]
        meta["test"][c] = [f"{c}/{i}" for i in ids[n_train:]]
    (base / "meta").mkdir(parents=True)
    for split in ("train", "test"):
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta[split]))
        (base / "meta" / f"{split}.txt").write_text("\n".join(sum(meta[split].values(), [])) + "\n")
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    (base / "meta" / "labels.txt").write_text("\n".join(c.replace("_", " ").title() for c in classes) + "\n")
    return base


def collect(loader):
    xs, ys = zip(*[(x, y) for x, y in loader])
    return torch.cat(xs), torch.cat(ys)


def test_imagenet(tmp_path):
    write_imagenet(tmp_path)
    train, test, spec = build_loaders("imagenet", data_dir=tmp_path, batch_size=5, workers=0)
    assert spec.num_classes == 3 and spec.image_size == 224 and spec.in_chans == 3 and not spec.in_memory
    assert get_dataset_spec("imagenet").num_classes == 1000
    assert isinstance(train, FolderLoader)
    assert (len(train), train.num_samples, len(test), test.num_samples) == (3, 12, 2, 6)
    x, y = collect(test)
    assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    # eval = resize 256, centre crop 224, then normalisation, exactly
    from torchvision.datasets import ImageFolder

    ref_img, _ = ImageFolder(str(tmp_path / "val"))[3]
    ref = eval_transform(224)(ref_img).float()
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    torch.testing.assert_close(x[3], (ref / 255 - mean) / std)
    x, y = collect(train)
    assert x.shape == (12, 3, 224, 224) and sorted(y.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_imagenet_augmentation_is_pure_function_of_seed_and_epoch(tmp_path):
    """Per-sample seeds from the sampler: the same batches with 0 or 2 workers, for any history."""
    write_imagenet(tmp_path, n_train=3, n_val=1)
    aug = AugmentConfig(random_resized_crop=True, hflip=True, rotation=10)
    kw = dict(data_dir=tmp_path, batch_size=4, augment=aug, seed=3, limit=8)
    a, _, _ = build_loaders("imagenet", workers=0, **kw)
    state = torch.get_rng_state()
    a.set_epoch(0)
    e0 = [b for b in a]
    a.set_epoch(1)
    e1 = [b for b in a]
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(e0, e1))
    b, _, _ = build_loaders("imagenet", workers=2, **kw)
    b.set_epoch(1)
    e1b = [t for t in b]
    assert len(e1b) == len(e1) == 2
    for (x1, y1), (x2, y2) in zip(e1, e1b):
        assert torch.equal(y1, y2) and torch.equal(x1, x2)


def test_close_stops_the_persistent_workers(tmp_path):
    import multiprocessing

    def children() -> set[int]:
        return {p.pid for p in multiprocessing.active_children()}

    write_imagenet(tmp_path, n_train=2, n_val=1)
    train, test, _ = build_loaders("imagenet", data_dir=tmp_path, batch_size=2, workers=2)
    before = children()
    first = collect(train)
    workers = children() - before
    assert len(workers) == 2  # kept alive for the next epoch
    train.close()
    assert not workers & children()
    again = collect(train)  # iterating after close starts new workers, same batches
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    workers = children() - before
    train.close()
    test.close()  # never iterated: nothing to stop
    assert not workers & children()
    half_read = iter(train)  # an epoch left half read (an exception in the loop): close stops it too
    next(half_read)
    workers = children() - before
    assert len(workers) == 2
    train.close()
    assert not workers & children()


def test_imagenet_rank_sharding(tmp_path):
    write_imagenet(tmp_path, n_train=3, n_val=3)
    loaders = [build_loaders("imagenet", data_dir=tmp_path, batch_size=2, workers=0, rank=r, world_size=2)
               for r in range(2)]
    trains = [collect(t)[1].tolist() for t, _, _ in loaders]
    assert len(loaders[0][0]) == len(loaders[1][0]) == 3 and len(trains[0]) == len(trains[1]) == 5
    assert loaders[0][0].num_samples == loaders[1][0].num_samples == 5  # 9 padded to 10 over 2 ranks
    assert sorted(set(trains[0] + trains[1])) == [0, 1, 2]
    evals = [collect(te)[1].tolist() for _, te, _ in loaders]
    assert sorted(evals[0] + evals[1]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # each test image once
    assert (loaders[0][1].num_samples, loaders[1][1].num_samples) == (5, 4)


def test_imagenet_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="--data-dir"):
        build_loaders("imagenet", batch_size=4)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as e:
        build_loaders("imagenet", data_dir=tmp_path, batch_size=4)
    assert str(tmp_path / "val") in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as e:  # class folders but no images
        build_loaders("imagenet", data_dir=tmp_path, batch_size=4)
    assert "\n" not in str(e.value)


def test_imagenet_class_mismatch(tmp_path):
    write_imagenet(tmp_path, classes=("a", "b"), n_train=1, n_val=1)
    write_jpeg(tmp_path / "val" / "c" / "x.JPEG", 0)
    with pytest.raises(DatasetCorruptError, match="different class folders"):
        build_loaders("imagenet", data_dir=tmp_path, batch_size=4)


def test_imagenet_limit_and_sizes(tmp_path):
    write_imagenet(tmp_path)
    train, test, _ = build_loaders("imagenet", data_dir=tmp_path, batch_size=4, eval_batch_size=3, workers=0, limit=5)
    assert (train.num_samples, test.num_samples, len(train), len(test)) == (5, 5, 2, 2)
    # the train transform without random-resized crop: the eval resize and centre crop
    x, _ = next(iter(train))
    assert x.shape[1:] == (3, 224, 224)


def test_food101(tmp_path):
    write_food101(tmp_path)
    train, test, spec = build_loaders("food101", data_dir=tmp_path, batch_size=4, workers=0,
                                      augment=AugmentConfig(random_resized_crop=True, hflip=True))
    assert spec.num_classes == 3 and spec.image_size == 224 and get_dataset_spec("food101").num_classes == 101
    assert (train.num_samples, test.num_samples) == (9, 6)
    x, y = collect(test)
    assert x.shape == (6, 3, 224, 224) and y.tolist() == [0, 0, 1, 1, 2, 2]
    x, y = collect(train)
    assert x.shape == (9, 3, 224, 224) and sorted(y.tolist()) == [0] * 3 + [1] * 3 + [2] * 3
    # data_dir may also be the food-101 folder itself
    _, test2, _ = build_loaders("food101", data_dir=tmp_path / "food-101", batch_size=4, workers=0)
    assert test2.num_samples == 6


def test_food101_matches_torchvision_listing(tmp_path):
    from torchvision.datasets import Food101

    write_food101(tmp_path)
    tv = Food101(str(tmp_path), split="test")
    _, test, _ = build_loaders("food101", data_dir=tmp_path, batch_size=6, workers=0)
    _, y = next(iter(test))
    assert y.tolist() == [tv[i][1] for i in range(len(tv))]


def test_food101_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        build_loaders("food101", data_dir=tmp_path, batch_size=4)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "food-101") in msg and "--download" in msg


@pytest.mark.parametrize("kind", ["json", "image"])
def test_food101_corrupt(tmp_path, kind):
    base = write_food101(tmp_path)
    if kind == "json":
        (base / "meta" / "test.json").write_text("{not json")
    else:
        for p in (base / "images" / "apple_pie").iterdir():
            p.unlink()
    with pytest.raises(DatasetCorruptError) as e:
        build_loaders("food101", data_dir=tmp_path, batch_size=4)
    assert "\n" not in str(e.value)


def test_food101_download(tmp_path, monkeypatch):
    import torchvision.datasets

    real = torchvision.datasets.Food101

    def fake(root, split="train", download=False, **kw):
        if download:
            write_food101(Path(root))
        return real(root, split=split, **kw)

    monkeypatch.setattr(torchvision.datasets, "Food101", fake)
    _, test, _ = build_loaders("food101", data_dir=tmp_path, batch_size=4, workers=0, download=True)
    assert test.num_samples == 6

    def offline(*a, **k):
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "Food101", offline)
    with pytest.raises(DatasetNotFoundError, match="download .* failed"):
        build_loaders("food101", data_dir=tmp_path / "other", batch_size=4, download=True)
