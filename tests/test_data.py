"""Data layer: the in-memory datasets (Fashion-MNIST, digits, CIFAR), batched augmentation, sharding, errors.

Fashion-MNIST and CIFAR are tested on small files written here in exactly the on-disk formats
(IDX, gz or plain; torchvision's CIFAR pickles), and checked against torchvision's own readers.
"""

from __future__ import annotations

import gzip
import math
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import biasloss.data as bd
from biasloss.data import (
    DATASETS,
    AugmentConfig,
    DatasetCorruptError,
    DatasetNotFoundError,
    InMemoryLoader,
    build_loaders,
    get_dataset_spec,
)
from biasloss.data import _sources

FASHION_STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


# ------------------------------------------------------------------------------------------
# writers for the on-disk formats
# ------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 0, 0, type 0x08, ndim, big-endian dims, data."""
    assert array.dtype == np.uint8
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def fashion_arrays(n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_fashion(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            with gzip.open(folder / f"{stem}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / stem).write_bytes(data)


def cifar_arrays(num_classes: int, n_train: int, n_test: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 3072), dtype=np.uint8), rng.integers(0, num_classes, n_train).tolist(),
            rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), rng.integers(0, num_classes, n_test).tolist())


def write_cifar(root: Path, num_classes: int, n_train: int = 40, n_test: int = 15, seed: int = 0,
                protocol: int = pickle.DEFAULT_PROTOCOL):
    """torchvision's CIFAR 'python version': pickled dicts with uint8 'data' (N, 3072) rows (R, G, B planes)."""
    train_x, train_y, test_x, test_y = cifar_arrays(num_classes, n_train, n_test, seed)

    def dump(path: Path, obj: dict) -> None:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)

    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i, part in enumerate(np.array_split(np.arange(n_train), 5)):
            dump(folder / f"data_batch_{i + 1}", {
                "batch_label": f"training batch {i + 1} of 5", "labels": [train_y[j] for j in part],
                "data": train_x[part], "filenames": [f"img_{j}.png" for j in part]})
        dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_y, "data": test_x,
                                     "filenames": [f"t_{j}.png" for j in range(n_test)]})
        dump(folder / "batches.meta", {"num_cases_per_batch": 10000, "num_vis": 3072,
                                       "label_names": [f"class{i}" for i in range(10)]})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            dump(folder / name, {"filenames": [f"{name}_{j}.png" for j in range(len(y))], "batch_label": name,
                                 "fine_labels": y, "coarse_labels": [v // 5 for v in y], "data": x})
        dump(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                               "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return train_x, np.array(train_y), test_x, np.array(test_y)


def normalised(images_nchw_uint8: torch.Tensor, spec) -> torch.Tensor:
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (images_nchw_uint8.float() / 255 - mean) / std


def collect(loader):
    xs, ys = zip(*[(x, y) for x, y in loader])
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    """Hide the real Debian Fashion-MNIST and the download root, so that only the test's files count."""
    monkeypatch.setattr(_sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setenv("BIASLOSS_DATA", str(tmp_path / "no-download-root"))


# ------------------------------------------------------------------------------------------
# specs and argument errors
# ------------------------------------------------------------------------------------------


def test_registry():
    assert set(DATASETS) == {"fashion-mnist", "digits", "cifar10", "cifar100", "imagenet", "food101"}
    for name, spec in DATASETS.items():
        assert spec.name == name and get_dataset_spec(name) is spec
        assert len(spec.mean) == len(spec.std) == spec.in_chans
        assert spec.small_input == (spec.image_size <= 64)
        assert spec.in_memory == spec.small_input
    assert get_dataset_spec("cifar100").num_classes == 100
    assert get_dataset_spec("digits").image_size == 32
    with pytest.raises(dataclasses_frozen_error()):
        get_dataset_spec("cifar10").num_classes = 3  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as e:
        get_dataset_spec("mnist")
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in DATASETS)
    with pytest.raises(ValueError, match="fashion-mnist"):
        build_loaders("svhn", batch_size=8)


@pytest.mark.parametrize("kwargs, exc", [
    (dict(batch_size=0), ValueError),
    (dict(batch_size=-4), ValueError),
    (dict(batch_size=True), TypeError),
    (dict(batch_size=2.5), TypeError),
    (dict(batch_size=8, eval_batch_size=0), ValueError),
    (dict(batch_size=8, workers=-1), ValueError),
    (dict(batch_size=8, world_size=0), ValueError),
    (dict(batch_size=8, rank=2, world_size=2), ValueError),
    (dict(batch_size=8, limit=0), ValueError),
    (dict(batch_size=8, augment="flip"), TypeError),
    (dict(batch_size=8, augment=AugmentConfig(random_resized_crop=True)), ValueError),
    (dict(batch_size=2000, drop_last=True), ValueError),  # no whole batch in 1,437 samples
])
def test_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        build_loaders("digits", **kwargs)


def test_augment_config_validation():
    assert not AugmentConfig().enabled and AugmentConfig(hflip=True).enabled
    with pytest.raises(ValueError):
        AugmentConfig(crop_padding=-1)
    with pytest.raises(ValueError):
        AugmentConfig(rotation=-5)
    with pytest.raises(TypeError):
        AugmentConfig(rotation="15")


def test_set_epoch_validation():
    train, _, _ = build_loaders("digits", batch_size=64, limit=100)
    for bad in (-1, 1.0, True, "2"):
        with pytest.raises(ValueError):
            train.set_epoch(bad)


# ------------------------------------------------------------------------------------------
# Fashion-MNIST
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flat", "torchvision", "named"])
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_layouts(tmp_path, no_debian, layout, gz):
    arrays = fashion_arrays()
    folder = {"flat": tmp_path, "torchvision": tmp_path / "FashionMNIST" / "raw", "named": tmp_path / "fashion-mnist"}[layout]
    write_fashion(folder, arrays, gz)
    train, test, spec = build_loaders("fashion-mnist", data_dir=tmp_path, batch_size=16, eval_batch_size=8)
    assert spec is get_dataset_spec("fashion-mnist")
    assert (len(train), train.num_samples, len(test), test.num_samples) == (4, 50, 3, 20)
    x, y = collect(test)  # eval: in order, unaugmented
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, normalised(torch.from_numpy(arrays["t10k-images-idx3-ubyte"])[:, None], spec))
    assert torch.equal(y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    x, y = collect(train)  # shuffled but complete
    assert x.shape == (50, 1, 28, 28)
    assert sorted(y.tolist()) == sorted(arrays["train-labels-idx1-ubyte"].tolist())


def test_fashion_mnist_reader_matches_torchvision(tmp_path):
    from torchvision.datasets import FashionMNIST

    arrays = fashion_arrays(30, 10)
    write_fashion(tmp_path / "FashionMNIST" / "raw", arrays, gz=False)
    ours = bd.load_arrays("fashion-mnist", tmp_path)
    for train, images, labels in ((True, ours.train_images, ours.train_labels),
                                  (False, ours.test_images, ours.test_labels)):
        tv = FashionMNIST(str(tmp_path), train=train, download=False)
        assert torch.equal(images[..., 0], tv.data) and torch.equal(labels, tv.targets)


def test_fashion_mnist_limit(tmp_path, no_debian):
    write_fashion(tmp_path, fashion_arrays(), gz=True)
    train, test, _ = build_loaders("fashion-mnist", data_dir=tmp_path, batch_size=4, limit=10)
    assert (train.num_samples, test.num_samples, len(train), len(test)) == (10, 10, 3, 3)


@pytest.mark.skipif(not all((Path("/usr/share/datasets/fashion-mnist") / f"{s}.gz").is_file() for s in FASHION_STEMS),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_files(monkeypatch, tmp_path):
    monkeypatch.setenv("BIASLOSS_DATA", str(tmp_path))  # nothing in the download root: falls through to Debian
    arrays = bd.load_arrays("fashion-mnist")
    assert arrays.train_images.shape == (60000, 28, 28, 1) and arrays.test_images.shape == (10000, 28, 28, 1)
    assert torch.bincount(arrays.train_labels).tolist() == [6000] * 10
    spec = get_dataset_spec("fashion-mnist")
    assert abs(arrays.train_images.float().mean().item() / 255 - spec.mean[0]) < 1e-3
    train, test, _ = build_loaders("fashion-mnist", batch_size=100, limit=300)
    assert len(train) == 3 and test.num_samples == 300
    x, y = next(iter(train))
    assert x.shape == (100, 1, 28, 28)


def test_fashion_mnist_missing(tmp_path, no_debian):
    with pytest.raises(DatasetNotFoundError) as e:
        build_loaders("fashion-mnist", data_dir=tmp_path / "empty", batch_size=8)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "empty") in msg and str(tmp_path / "no-debian") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--download" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_fashion_mnist_incomplete_set_is_missing(tmp_path, no_debian):
    arrays = fashion_arrays()
    del arrays["t10k-labels-idx1-ubyte"]
    write_fashion(tmp_path, arrays, gz=False)
    with pytest.raises(DatasetNotFoundError):
        build_loaders("fashion-mnist", data_dir=tmp_path, batch_size=8)


def _corrupt(kind: str, folder: Path) -> None:
    path = folder / "train-images-idx3-ubyte"
    data = path.read_bytes()
    if kind == "magic":
        path.write_bytes(b"\x00\x00\x08\x07" + data[4:])
    elif kind == "notidx":
        path.write_bytes(b"PK\x03\x04 this is a zip")
    elif kind == "truncated":
        path.write_bytes(data[:-100])
    elif kind == "long":
        path.write_bytes(data + b"\x00" * 7)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "badgz":
        path.unlink()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    elif kind == "count":  # 50 images, 49 labels
        lab = folder / "train-labels-idx1-ubyte"
        lab.write_bytes(idx_bytes(np.zeros(49, np.uint8)))
    elif kind == "label":
        lab = folder / "train-labels-idx1-ubyte"
        lab.write_bytes(idx_bytes(np.full(50, 10, np.uint8)))
    elif kind == "ndim":  # images stored as 1-D
        path.write_bytes(idx_bytes(np.zeros(50 * 784, np.uint8)))
    elif kind == "negative":  # signed int32 labels, one of them -3
        labels = np.zeros(50, ">i4")
        labels[7] = -3
        (folder / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 50) + labels.tobytes())
    elif kind.startswith("size"):  # 8 x 8 or 1 x 1 images instead of 28 x 28
        side = int(kind[4:])
        path.write_bytes(idx_bytes(np.zeros((50, side, side), np.uint8)))
    elif kind == "huge":  # dimensions whose product passes 2**63
        path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + b"\x00" * 64)


@pytest.mark.parametrize("kind", ["magic", "notidx", "truncated", "long", "empty", "badgz", "count", "label", "ndim",
                                  "negative", "size8", "size1", "huge"])
def test_fashion_mnist_corrupt(tmp_path, no_debian, kind):
    write_fashion(tmp_path, fashion_arrays(), gz=False)
    _corrupt(kind, tmp_path)
    with pytest.raises(DatasetCorruptError) as e:
        build_loaders("fashion-mnist", data_dir=tmp_path, batch_size=8)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value) and "train-" in str(e.value)


def test_read_idx_roundtrip_other_types(tmp_path):
    arr = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    (tmp_path / "a").write_bytes(bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 3, 4) + arr.tobytes())
    out = bd.read_idx(tmp_path / "a")
    assert out.shape == (3, 4) and out.tolist() == arr.tolist()


# ------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------


def test_digits():
    train, test, spec = build_loaders("digits", batch_size=100, seed=3)
    assert spec.image_size == 32 and spec.in_chans == 1 and spec.num_classes == 10
    assert (train.num_samples, test.num_samples, len(train), len(test)) == (1437, 360, 15, 4)
    x, y = collect(test)
    assert x.shape == (360, 1, 32, 32)
    assert torch.bincount(y, minlength=10).min() >= 35  # stratified
    # The split does not depend on the training seed; the statistics match the spec.
    _, test2, _ = build_loaders("digits", batch_size=100, seed=11)
    assert torch.equal(collect(test2)[1], y)
    a = bd.load_arrays("digits")
    allx = torch.cat([a.train_images, a.test_images]).float() / 255
    assert abs(allx.mean().item() - spec.mean[0]) < 1e-3 and abs(allx.std().item() - spec.std[0]) < 1e-3
    assert a.train_images.dtype == torch.uint8 and a.train_images.max() == 255


# ------------------------------------------------------------------------------------------
# CIFAR
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar(tmp_path, num_classes, protocol):
    name = f"cifar{num_classes}"
    train_x, train_y, test_x, test_y = write_cifar(tmp_path, num_classes, protocol=protocol)
    train, test, spec = build_loaders(name, data_dir=tmp_path, batch_size=16)
    assert spec.num_classes == num_classes and spec.in_chans == 3 and spec.image_size == 32
    assert (train.num_samples, test.num_samples, len(train), len(test)) == (40, 15, 3, 1)
    x, y = collect(test)
    assert x.shape == (15, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, normalised(torch.from_numpy(test_x).view(-1, 3, 32, 32), spec))
    assert y.tolist() == test_y.tolist()
    x, y = collect(train)
    assert sorted(y.tolist()) == sorted(train_y.tolist())
    # data_dir may also be the cifar folder itself
    folder = tmp_path / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    _, test2, _ = build_loaders(name, data_dir=folder, batch_size=16)
    assert torch.equal(collect(test2)[0], collect(test)[0])


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_matches_torchvision(tmp_path, monkeypatch, num_classes):
    import torchvision.datasets as tvd

    write_cifar(tmp_path, num_classes)
    cls = tvd.CIFAR10 if num_classes == 10 else tvd.CIFAR100
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *a, **k: True)  # our files have other MD5 sums
    ours = bd.load_arrays(f"cifar{num_classes}", tmp_path)
    for train, images, labels in ((True, ours.train_images, ours.train_labels),
                                  (False, ours.test_images, ours.test_labels)):
        tv = cls(str(tmp_path), train=train, download=False)
        assert np.array_equal(images.numpy(), tv.data) and labels.tolist() == tv.targets


def test_cifar_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        build_loaders("cifar100", data_dir=tmp_path, batch_size=8)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "cifar-100-python") in msg and "--download" in msg


def test_cifar_missing_without_data_dir_uses_download_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BIASLOSS_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        build_loaders("cifar10", batch_size=8)
    write_cifar(tmp_path, 10)
    _, test, _ = build_loaders("cifar10", batch_size=8)
    assert test.num_samples == 15


class _Evil:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-biasloss-test",))


@pytest.mark.parametrize("kind", ["garbage", "truncated", "notdict", "nokey", "shape", "dtype", "labels", "global"])
def test_cifar_corrupt(tmp_path, kind):
    write_cifar(tmp_path, 100)
    path = tmp_path / "cifar-100-python" / "train"
    with open(path, "rb") as f:
        entry = pickle.load(f)
    if kind == "garbage":
        path.write_bytes(b"not a pickle at all")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        if kind == "notdict":
            entry = [1, 2, 3]
        elif kind == "nokey":
            del entry["fine_labels"]
        elif kind == "shape":
            entry["data"] = entry["data"][:, :100]
        elif kind == "dtype":
            entry["data"] = entry["data"].astype(np.float32)
        elif kind == "labels":
            entry["fine_labels"] = [100] * len(entry["fine_labels"])
        elif kind == "global":
            entry["extra"] = _Evil()
        with open(path, "wb") as f:
            pickle.dump(entry, f)
    with pytest.raises(DatasetCorruptError) as e:
        build_loaders("cifar100", data_dir=tmp_path, batch_size=8)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


# ------------------------------------------------------------------------------------------
# augmentation and epoch order (synthetic data through InMemoryLoader)
# ------------------------------------------------------------------------------------------

MEAN, STD = (0.0,), (1 / 255,)  # normalise to x = uint8 value, to read pixels back exactly


def ramp_images(n: int, h: int = 12, w: int = 12, c: int = 1) -> torch.Tensor:
    """uint8 NHWC images whose pixel (i, j) is 1 + j + w * i (never 0, so that padding is visible)."""
    base = (1 + torch.arange(h * w)).view(h, w).to(torch.uint8)
    return base.view(1, h, w, 1).expand(n, h, w, c).contiguous()


def make_loader(images, *, train=True, augment=AugmentConfig(), batch_size=8, seed=0, rank=0, world_size=1,
                drop_last=False, mean=MEAN, std=STD):
    labels = torch.arange(images.shape[0])  # label = sample index: the order can be read back
    c = images.shape[3]
    return InMemoryLoader(images, labels, batch_size=batch_size, mean=mean if len(mean) == c else mean * c,
                          std=std if len(std) == c else std * c, device=torch.device("cpu"), train=train, augment=augment,
                          seed=seed, rank=rank, world_size=world_size, drop_last=drop_last)


def epoch(loader, e):
    loader.set_epoch(e)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


FULL = AugmentConfig(crop_padding=2, hflip=True, rotation=15)


@pytest.mark.parametrize("augment", [AugmentConfig(), AugmentConfig(crop_padding=2, hflip=True), FULL])
def test_epoch_is_pure_function_of_seed_and_epoch(augment):
    images = torch.randint(0, 256, (37, 12, 12, 3), dtype=torch.uint8)
    a, b = make_loader(images, augment=augment, seed=5), make_loader(images, augment=augment, seed=5)
    e0, e1 = epoch(a, 0), epoch(a, 1)
    assert same(epoch(b, 1), e1)  # resume straight into epoch 1
    assert same(epoch(b, 0), e0) and same(epoch(a, 1), e1)  # and repeatable in any order
    assert not same(e0, e1)
    assert not same(epoch(make_loader(images, augment=augment, seed=6), 0), e0)
    for x, y in e0:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 12, 12) and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)
    assert sorted(torch.cat([y for _, y in e0]).tolist()) == list(range(37))
    assert [len(y) for _, y in e0] == [8, 8, 8, 8, 5]


def test_global_rng_untouched():
    loader = make_loader(torch.randint(0, 256, (20, 12, 12, 1), dtype=torch.uint8), augment=FULL)
    state = torch.get_rng_state()
    epoch(loader, 3)
    assert torch.equal(state, torch.get_rng_state())


def test_eval_is_in_order_and_never_augmented():
    images = torch.randint(0, 256, (21, 12, 12, 3), dtype=torch.uint8)
    loader = make_loader(images, train=False, augment=FULL, batch_size=8)
    assert len(loader) == 3 and loader.num_samples == 21
    out = epoch(loader, 0)
    assert same(out, epoch(loader, 7))
    x, y = torch.cat([b[0] for b in out]), torch.cat([b[1] for b in out])
    assert y.tolist() == list(range(21))
    assert torch.equal(x, images.permute(0, 3, 1, 2).float())


def test_hflip_statistics():
    loader = make_loader(ramp_images(2000), augment=AugmentConfig(hflip=True), batch_size=500)
    x, _ = collect(loader)
    orig = ramp_images(1).permute(0, 3, 1, 2).float()
    flipped = (x == orig.flip(-1)).flatten(1).all(1)
    unflipped = (x == orig).flatten(1).all(1)
    assert bool((flipped ^ unflipped).all())  # every image is one or the other
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_crop_statistics():
    p, h = 3, 12
    loader = make_loader(ramp_images(3000), augment=AugmentConfig(crop_padding=p), batch_size=1000)
    x, _ = collect(loader)
    # Recover each sample's shift from one interior pixel that stays inside the image.
    v = x[:, 0, p + 2, p + 2].long() - 1  # original flat position
    dy = (v // h) - (p + 2)
    dx = (v % h) - (p + 2)
    assert dy.min() == -p and dy.max() == p and dx.min() == -p and dx.max() == p
    counts = torch.bincount((dy + p) * (2 * p + 1) + (dx + p), minlength=(2 * p + 1) ** 2).float()
    assert counts.min() > 0.5 * counts.mean()  # all 49 offsets, roughly uniform
    # A crop is a pure shift with zero fill: check every sample against the padded original.
    orig = torch.nn.functional.pad(ramp_images(1).permute(0, 3, 1, 2).float(), (p, p, p, p))[0, 0]
    for i in range(0, 3000, 97):
        oy, ox = int(p + dy[i]), int(p + dx[i])
        assert torch.equal(x[i, 0], orig[oy:oy + h, ox:ox + h])


def test_crop_flip_matches_reference_loop():
    # non-square, three channels: every sample is exactly one (offset, flip) of its padded original
    images = torch.randint(0, 256, (40, 9, 7, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (2, 2, 2, 2))  # NCHW, as the batches come
    x, y = collect(make_loader(images, augment=AugmentConfig(crop_padding=2, hflip=True), batch_size=16))
    seen = set()
    for out, i in zip(x, y.tolist()):
        refs = {(oy, ox, flip): padded[i, :, oy:oy + 9, ox:ox + 7].flip(-1) if flip else padded[i, :, oy:oy + 9, ox:ox + 7]
                for oy in range(5) for ox in range(5) for flip in (False, True)}
        match = [key for key, ref in refs.items() if torch.equal(out, ref.float())]
        assert len(match) == 1, (i, match)
        seen.add(match[0])
    assert {flip for *_, flip in seen} == {False, True} and len({(oy, ox) for oy, ox, _ in seen}) > 10
    # the flip alone: each sample as it is or mirrored
    x, y = collect(make_loader(images, augment=AugmentConfig(hflip=True), batch_size=16))
    original = images.permute(0, 3, 1, 2)[y].float()
    assert all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(x, original))


def test_rotation_keeps_the_pixel_grid_and_turns_in_pixel_units():
    # a rotation by next to nothing leaves the image as it was: the sampling grid sits on the pixel
    # centres (half a pixel off would blur every edge), whatever the shape
    images = torch.randint(0, 256, (8, 10, 14, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x, y = collect(make_loader(images, augment=AugmentConfig(rotation=1e-3), batch_size=8))
    torch.testing.assert_close(x, images.permute(0, 3, 1, 2)[y].float(), atol=0.5, rtol=0)
    # non-square: a dot 12 px right of the centre stays 12 px from it at every angle (rotated in
    # pixels, not in the normalised coordinates that would squeeze it to an ellipse)
    n, h, w = 100, 31, 45
    img = torch.zeros(h, w, dtype=torch.uint8)
    img[15, 22 + 12] = 255
    loader = make_loader(img.view(1, h, w, 1).expand(n, h, w, 1).contiguous(), augment=AugmentConfig(rotation=90),
                         batch_size=100)
    x, _ = collect(loader)
    mass = x[:, 0].sum((1, 2))
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    cy, cx = (x[:, 0] * ys).sum((1, 2)) / mass, (x[:, 0] * xs).sum((1, 2)) / mass
    torch.testing.assert_close(torch.hypot(cy - 15, cx - 22), torch.full((n,), 12.0), atol=0.3, rtol=0)
    angle = torch.rad2deg(torch.atan2(-(cy - 15), cx - 22))
    assert angle.min() < -70 and angle.max() > 70  # vertical, where the two scales differ most


def test_rotation_statistics():
    # A centred disc is invariant under rotation; an off-centre dot moves by the angle.
    n, h = 400, 33
    img = torch.zeros(h, h, dtype=torch.uint8)
    img[16, 28] = 255  # 12 px right of the centre
    loader = make_loader(img.view(1, h, h, 1).expand(n, h, h, 1).contiguous(), augment=AugmentConfig(rotation=30),
                         batch_size=100)
    x, _ = collect(loader)
    w = x[:, 0]
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(h).float(), indexing="ij")
    mass = w.sum((1, 2))
    cy, cx = (w * ys).sum((1, 2)) / mass, (w * xs).sum((1, 2)) / mass
    angle = torch.rad2deg(torch.atan2(-(cy - 16), cx - 16))  # counter-clockwise on screen
    assert angle.abs().max() <= 30.5
    assert angle.min() < -25 and angle.max() > 25 and abs(angle.mean()) < 4  # uniform in [-30, 30]
    assert (angle.abs() > 1).float().mean() > 0.9  # nearly every sample rotated


def test_drop_last():
    images = torch.zeros(37, 4, 4, 1, dtype=torch.uint8)
    loader = make_loader(images, batch_size=8, drop_last=True)
    assert len(loader) == 4 and loader.num_samples == 32
    out = epoch(loader, 0)
    assert [len(y) for _, y in out] == [8] * 4 and len(set(torch.cat([y for _, y in out]).tolist())) == 32


@pytest.mark.parametrize("n, world_size, batch_size, drop_last", [(37, 2, 8, False), (37, 3, 4, False),
                                                                 (40, 4, 5, True), (5, 4, 8, False)])
def test_rank_sharding(n, world_size, batch_size, drop_last):
    images = torch.randint(0, 256, (n, 8, 8, 3), dtype=torch.uint8)
    aug = AugmentConfig(crop_padding=2, hflip=True, rotation=10)
    ranks = [make_loader(images, augment=aug, batch_size=batch_size, seed=1, rank=r, world_size=world_size,
                         drop_last=drop_last) for r in range(world_size)]
    single = make_loader(images, augment=aug, batch_size=batch_size * world_size, seed=1, drop_last=drop_last)
    outs = [epoch(r, 2) for r in ranks]
    ref = epoch(single, 2)
    assert len({len(r) for r in ranks}) == 1 and len({r.num_samples for r in ranks}) == 1
    assert all(len(o) == len(ranks[0]) for o in outs)
    assert len(ref) == len(ranks[0])
    first_x, first_y = ref[0]
    for k, (x_ref, y_ref) in enumerate(ref):
        # Global batch k split over ranks: the same images with the same augmentation; the padding
        # at the end of the last batch repeats the epoch's first samples exactly.
        y, x = torch.cat([o[k][1] for o in outs]), torch.cat([o[k][0] for o in outs])
        m, extra = len(y_ref), len(y) - len(y_ref)
        assert 0 <= extra < world_size
        assert torch.equal(y[:m], y_ref) and torch.equal(x[:m], x_ref)
        assert torch.equal(y[m:], first_y[:extra]) and torch.equal(x[m:], first_x[:extra])
        assert len({len(o[k][1]) for o in outs}) == 1
    seen = torch.cat([y for o in outs for _, y in o])
    if drop_last:
        assert len(seen) == len(set(seen.tolist())) == (n // (batch_size * world_size)) * batch_size * world_size
    else:
        assert set(seen.tolist()) == set(range(n))  # everything covered
        assert len(seen) == math.ceil(n / world_size) * world_size  # padded by < world_size duplicates
        assert ranks[0].num_samples == math.ceil(n / world_size)


def test_eval_sharding_is_disjoint_and_complete():
    images = torch.randint(0, 256, (23, 8, 8, 1), dtype=torch.uint8)
    seen = []
    for r in range(3):
        loader = make_loader(images, train=False, batch_size=4, rank=r, world_size=3)
        y = torch.cat([y for _, y in loader])
        assert loader.num_samples == len(y)
        seen += y.tolist()
    assert sorted(seen) == list(range(23))


def test_resume_exact_on_build_loaders():
    """The trainer's contract: epoch e's batches depend only on (seed, e), whatever came before."""
    aug = AugmentConfig(crop_padding=4, hflip=True, rotation=15)
    a, _, _ = build_loaders("digits", batch_size=128, augment=aug, seed=7)
    epoch(a, 0)
    straight = epoch(a, 1)
    b, _, _ = build_loaders("digits", batch_size=128, augment=aug, seed=7)  # a fresh process resuming at 1
    assert same(epoch(b, 1), straight)


def test_normalisation_of_train_batches_without_augmentation():
    images = torch.randint(0, 256, (10, 6, 6, 3), dtype=torch.uint8)
    spec = get_dataset_spec("cifar10")
    loader = make_loader(images, batch_size=10, mean=spec.mean, std=spec.std)
    x, y = next(iter(loader))
    torch.testing.assert_close(x, normalised(images.permute(0, 3, 1, 2)[y], spec))


# ------------------------------------------------------------------------------------------
# download=True: torchvision's classes are replaced by fakes (no network in tests)
# ------------------------------------------------------------------------------------------


def test_fashion_mnist_download(tmp_path, no_debian, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:  # writes torchvision's layout, as the real download does
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            write_fashion(Path(root) / "FashionMNIST" / "raw", fashion_arrays(), gz=False)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    with pytest.raises(DatasetNotFoundError):  # not asked to download
        build_loaders("fashion-mnist", data_dir=tmp_path / "d", batch_size=8)
    assert calls == []
    train, _, _ = build_loaders("fashion-mnist", data_dir=tmp_path / "d", batch_size=8, download=True)
    assert calls == [(str(tmp_path / "d"), True)] and train.num_samples == 50
    build_loaders("fashion-mnist", data_dir=tmp_path / "d", batch_size=8, download=True)
    assert len(calls) == 1  # found on disk now: no second download


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "cifar100"])
def test_download_failure_is_one_line(tmp_path, no_debian, monkeypatch, name):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>\nmore detail")

    for cls in ("FashionMNIST", "CIFAR10", "CIFAR100"):
        monkeypatch.setattr(torchvision.datasets, cls, offline)
    with pytest.raises(DatasetNotFoundError) as e:
        build_loaders(name, data_dir=tmp_path, batch_size=8, download=True)
    msg = str(e.value)
    assert "\n" not in msg and "download" in msg and "name resolution" in msg and str(tmp_path) in msg


def test_cifar_download(tmp_path, monkeypatch):
    import torchvision.datasets

    class FakeCIFAR100:
        def __init__(self, root, train=True, download=False):
            assert download
            write_cifar(Path(root), 100)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    _, test, spec = build_loaders("cifar100", data_dir=tmp_path, batch_size=8, download=True)
    assert test.num_samples == 15 and spec.num_classes == 100
