"""Datasets for training and evaluation: one call, :func:`build_loaders`, for every dataset by name.

Small datasets (Fashion-MNIST, scikit-learn digits, CIFAR-10/100) are held as one uint8 tensor on
the training device and augmented per batch there with batched tensor ops (no worker processes),
as in airbench. Large ones (ImageNet, Food-101) use torchvision's datasets and PIL transforms in
DataLoader workers. Both follow :func:`build_loaders`' contract: every epoch's order and
augmentation are a pure function of ``(seed, epoch)``, so that a resumed run continues exactly.

Where each dataset is looked for (``data_dir`` is ``--data-dir``; the download root is
``$BIASLOSS_DATA`` or ``~/.cache/biasloss``):

- ``fashion-mnist``: IDX files (gz or plain) in ``data_dir``, ``data_dir/FashionMNIST/raw``
  (torchvision's layout) or ``data_dir/fashion-mnist``, then the Debian package's
  ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``);
  ``download=True`` lets torchvision fetch it.
- ``digits``: scikit-learn's bundled set; fixed stratified 80/20 split; resized 8 -> 32 px.
- ``cifar10`` / ``cifar100``: torchvision's ``cifar-10-batches-py`` / ``cifar-100-python`` pickles in
  ``data_dir``; ``download=True`` lets torchvision fetch them.
- ``imagenet``: ``data_dir/train`` and ``data_dir/val`` in ImageFolder layout.
- ``food101``: torchvision's ``Food101`` layout under ``data_dir/food-101``; ``download=True`` fetches it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from functools import partial
from typing import Any, Protocol, runtime_checkable

import torch

from biasloss.errors import InputError, InputTypeError

from ._folder import DetectionLoader, FolderLoader, eval_transform, train_transform
from ._memory import InMemoryLoader
from ._sources import (
    DIGITS_SIZE,
    ArrayData,
    default_root,
    find_fashion_mnist,
    find_food101_root,
    find_imagenet_root,
    load_cifar,
    load_digits,
    load_fashion_mnist,
    read_idx,
)
from ._specs import (
    AugmentConfig,
    DatasetCorruptError,
    DatasetNotFoundError,
    DatasetSpec,
)

__all__ = [
    "ArrayData",
    "AugmentConfig",
    "DATASETS",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DetectionLoader",
    "FolderLoader",
    "InMemoryLoader",
    "Loader",
    "build_loaders",
    "default_root",
    "eval_transform",
    "find_fashion_mnist",
    "get_dataset_spec",
    "load_arrays",
    "read_idx",
    "train_transform",
]


@runtime_checkable
class Loader(Protocol):
    """What :func:`build_loaders` returns: an iterable of ``(images, labels)`` batches on the device."""

    num_samples: int  # samples this rank sees per epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...  # batches per epoch

    def set_epoch(self, epoch: int) -> None: ...

    def close(self) -> None: ...  # stops worker processes, if any


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return value


def _digits(data_dir: str | os.PathLike | None = None, *, download: bool = False) -> ArrayData:
    return load_digits()  # bundled with scikit-learn


def _imagenet(data_dir: str | os.PathLike | None, *, download: bool = False) -> tuple[Any, Any, list[str]]:
    from torchvision.datasets import ImageFolder

    root = find_imagenet_root(data_dir)
    try:
        train, test = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
    except FileNotFoundError as e:  # no class folders, or no images with a known extension
        raise DatasetNotFoundError(f"imagenet: {str(e).splitlines()[0]} (ImageFolder layout under {root})") from None
    if train.classes != test.classes:
        only = sorted(set(train.classes) ^ set(test.classes))[:5]
        raise DatasetCorruptError(
            f"imagenet: train/ and val/ under {root} have different class folders (e.g. {', '.join(only)})")
    return train, test, train.classes


def _food101(data_dir: str | os.PathLike | None, *, download: bool = False) -> tuple[Any, Any, list[str]]:
    from torchvision.datasets import Food101

    root = find_food101_root(data_dir, download=download)
    try:
        train, test = Food101(str(root), split="train"), Food101(str(root), split="test")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as e:
        raise DatasetCorruptError(f"food101: bad meta/*.json under {root / 'food-101'} ({e})") from None
    except RuntimeError as e:
        raise DatasetNotFoundError(f"food101: {e} (looked under {root / 'food-101'})") from None
    for ds in (train, test):
        try:
            if len(ds):
                ds[0]  # the first listed image is there
        except FileNotFoundError as e:
            raise DatasetCorruptError(f"food101: {e.filename} is listed in meta/ but missing") from None
        except OSError as e:  # PIL cannot read it
            raise DatasetCorruptError(f"food101: the first image of meta/ is not a readable image ({e})") from None
    if train.classes != test.classes:
        raise DatasetCorruptError("food101: meta/train.json and meta/test.json list different classes")
    return train, test, train.classes


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

#: The datasets by name: what each is, the recipe it trains with by default, and how it is read.
DATASETS: dict[str, DatasetSpec] = {
    # Statistics of the 60,000 training images (computed from the Debian package's files).
    "fashion-mnist": DatasetSpec("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), True, True,
                                 recipe="fashion-mnist", read=load_fashion_mnist),
    # scikit-learn's 8x8 digits, resized once to 32x32 (bilinear) so that stride-8 models see a
    # 4x4 map; statistics of all 1,797 resized images.
    "digits": DatasetSpec("digits", 10, 1, DIGITS_SIZE, (0.3052,), (0.3236,), True, True, recipe="digits", read=_digits),
    "cifar10": DatasetSpec("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True, True,
                           recipe="cifar100", read=partial(load_cifar, 10)),
    # Normalisation as in the paper's CIFAR-100 recipe.
    "cifar100": DatasetSpec("cifar100", 100, 3, 32, (0.507, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761), True, True,
                            recipe="cifar100", read=partial(load_cifar, 100)),
    "imagenet": DatasetSpec("imagenet", 1000, 3, 224, _IMAGENET_MEAN, _IMAGENET_STD, False, False,
                            recipe="imagenet", read=_imagenet),
    # Fine-tuned from ImageNet weights: ImageNet statistics.
    "food101": DatasetSpec("food101", 101, 3, 224, _IMAGENET_MEAN, _IMAGENET_STD, False, False,
                           recipe="food101", read=_food101),
}


def get_dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered under ``name``; ``ValueError`` listing the known names otherwise."""
    if not isinstance(name, str) or name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_arrays(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False) -> ArrayData:
    """The raw uint8 NHWC tensors (on the CPU) of a small (in-memory) dataset."""
    spec = get_dataset_spec(name)
    if not spec.in_memory:
        raise InputError(f"{name} is not an in-memory dataset; use build_loaders")
    return spec.read(data_dir, download=download)


def build_loaders(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    batch_size: int,
    eval_batch_size: int | None = None,
    device: torch.device | str = "cpu",
    augment: AugmentConfig = AugmentConfig(),
    seed: int = 0,
    workers: int = 4,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    download: bool = False,
    limit: int | None = None,
) -> tuple[Loader, Loader, DatasetSpec]:
    """Training and evaluation loaders for the dataset ``name`` and its :class:`DatasetSpec`.

    Both loaders yield ``(images, labels)``: float32 normalised ``(B, C, H, W)`` channels-last
    images and int64 ``(B,)`` labels on ``device``; both have ``len`` (batches per epoch),
    ``set_epoch(epoch)`` and ``num_samples`` (samples this rank sees per epoch).

    Training: shuffled and augmented per ``augment``; order and augmentation are a pure function
    of ``(seed, epoch)`` (call ``set_epoch`` before each epoch). With ``world_size > 1`` each rank
    takes its contiguous ``1/world_size`` of every global batch of ``batch_size * world_size``
    samples (the permutation padded by wrap-around unless ``drop_last``), so all ranks see the
    same number of batches. Evaluation: unaugmented, in order, the whole test split once;
    distributed, rank ``r`` takes samples ``r, r + world_size, ...`` without padding.

    ``workers`` only applies to the folder datasets (imagenet, food101); the in-memory ones run
    in the calling process. ``limit`` keeps the first ``limit`` training and test samples.
    For folder datasets the returned spec's ``num_classes`` is the number of classes found on
    disk (a subset such as ImageNet-100 gets a 100-way spec).

    Raises ``ValueError`` for an unknown name or bad arguments, :class:`DatasetNotFoundError`
    when the data is missing (one line: where it looked, how to get it) and
    :class:`DatasetCorruptError` (a ``ValueError``) when its files are malformed.
    """
    spec = get_dataset_spec(name)
    _check_int("batch_size", batch_size, 1)
    eval_batch_size = batch_size if eval_batch_size is None else _check_int("eval_batch_size", eval_batch_size, 1)
    _check_int("workers", workers, 0)
    _check_int("world_size", world_size, 1)
    _check_int("rank", rank, 0)
    _check_int("seed", seed, -(1 << 63))
    if rank >= world_size:
        raise InputError(f"rank must be < world_size ({world_size}), got {rank}")
    if limit is not None:
        _check_int("limit", limit, 1)
    if not isinstance(augment, AugmentConfig):
        raise InputTypeError(f"augment must be an AugmentConfig, got {type(augment).__name__}")
    device = torch.device(device)
    common = dict(mean=spec.mean, std=spec.std, device=device, seed=seed, rank=rank, world_size=world_size)

    if spec.in_memory:
        if augment.random_resized_crop:
            raise InputError(f"random_resized_crop is for the large (folder) datasets, not {name}; "
                             "use crop_padding for small images")
        data = load_arrays(name, data_dir, download=download)
        n_train, n_test = data.train_images.shape[0], data.test_images.shape[0]
        for split, n in (("train", n_train), ("test", n_test)):  # the readers name their files; a last guard
            if n == 0:
                raise DatasetCorruptError(f"{name}: the {split} split is empty (data in "
                                          f"{data_dir if data_dir is not None else 'the default place'})")
        if limit is not None:
            n_train, n_test = min(limit, n_train), min(limit, n_test)
        train = InMemoryLoader(data.train_images[:n_train], data.train_labels[:n_train], batch_size=batch_size,
                               train=True, augment=augment, drop_last=drop_last, **common)
        test = InMemoryLoader(data.test_images[:n_test], data.test_labels[:n_test], batch_size=eval_batch_size,
                              train=False, **common)
        return train, test, spec

    train_ds, test_ds, classes = spec.read(data_dir, download=download)
    if limit is not None:
        from torch.utils.data import Subset

        train_ds = Subset(train_ds, range(min(limit, len(train_ds))))
        test_ds = Subset(test_ds, range(min(limit, len(test_ds))))
    if len(classes) != spec.num_classes:
        spec = dataclasses.replace(spec, num_classes=len(classes))
    train = FolderLoader(train_ds, train_transform(spec.image_size, augment), batch_size=batch_size, train=True,
                         drop_last=drop_last, workers=workers, **common)
    test = FolderLoader(test_ds, eval_transform(spec.image_size), batch_size=eval_batch_size, train=False,
                        workers=workers, **common)
    return train, test, spec
