"""The loader for large image datasets (ImageNet, Food-101): torchvision datasets, PIL transforms, workers.

Workers decode and augment to uint8 ``(C, H, W)``; conversion to float, normalisation and the
channels-last layout happen on the training device after the (4x smaller) uint8 transfer.

Exact resumption: the batch sampler (in the main process) hands each worker ``(index, seed)``
pairs, the seeds drawn per epoch from the same generator as the order (see :mod:`._plan`), and
each sample's transform runs under ``torch.manual_seed(seed)`` inside ``fork_rng``. So every
sample's augmentation is a pure function of ``(seed, epoch, position)``: it does not depend on
the number of workers, nor on the number of ranks, and the caller's RNG is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ._augment import normalize
from ._plan import EpochBatches, epoch_generator
from ._specs import AugmentConfig, DatasetCorruptError

__all__ = ["DetectionLoader", "FolderLoader", "eval_transform", "train_transform"]


def train_transform(image_size: int, augment: AugmentConfig) -> Callable:
    """PIL -> uint8 ``(C, H, W)``: random-resized crop (or the eval resize + centre crop), then padding crop, flip, rotation."""
    from torchvision import transforms as T

    ops: list[Callable] = []
    if augment.random_resized_crop:
        ops.append(T.RandomResizedCrop(image_size, interpolation=T.InterpolationMode.BILINEAR, antialias=True))
    else:  # the evaluation's: the shorter side to image_size * 256 / 224 (256 for 224), centre crop
        ops += [T.Resize(int(round(image_size * 256 / 224)), antialias=True), T.CenterCrop(image_size)]
    if augment.crop_padding > 0:
        ops.append(T.RandomCrop(image_size, padding=augment.crop_padding))
    if augment.hflip:
        ops.append(T.RandomHorizontalFlip())
    if augment.rotation > 0:
        ops.append(T.RandomRotation(float(augment.rotation), interpolation=T.InterpolationMode.BILINEAR))
    ops.append(T.PILToTensor())
    return T.Compose(ops)


def eval_transform(image_size: int) -> Callable:
    """PIL -> uint8 ``(C, H, W)``: resize to ``image_size * 256 / 224``, centre crop ``image_size``."""
    return train_transform(image_size, AugmentConfig())


class _SeededDataset(Dataset):
    """``(transform(image), int(label))`` of ``base[i]`` (``transform=None``: ``base[i]`` as it
    is, a dataset that transforms its samples itself); an ``(i, seed)`` key seeds the RNG of the
    sample's loading and transform."""

    def __init__(self, base: Dataset, transform: Callable | None) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is None:
            return self._load(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._load(index)

    def _load(self, index: int) -> Any:
        try:
            sample = self.base[index]
        except OSError as e:  # PIL: unidentified or truncated image files are OSErrors
            samples = getattr(self.base, "samples", None)
            where = samples[index][0] if samples else f"image {index}"
            raise DatasetCorruptError(f"{where} cannot be read as an image ({e}); remove or replace it, then "
                                      "resume from the last checkpoint") from None
        if self.transform is None:
            return sample
        image, label = sample
        return self.transform(image), int(label)


class _PlanSampler(Sampler):
    """Batch sampler: this rank's batches of the loader's current epoch (train) or its eval shard."""

    def __init__(self, loader: "FolderLoader") -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[Any]]:
        return self.loader._batches()


class FolderLoader(EpochBatches):
    """Batches of ``(images, labels)`` from a map-style dataset of ``(PIL image, label)``.

    Same contract as :class:`InMemoryLoader`: float32 normalised channels-last images and int64
    labels on ``device``; ``len``, ``num_samples``, ``set_epoch``.
    """

    collate_fn: Callable | None = None  # the DataLoader's; None: its default (stacked tensors)

    def __init__(
        self,
        dataset: Dataset,
        transform: Callable | None,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        workers: int = 4,
    ) -> None:
        self.dataset_size = len(dataset)  # type: ignore[arg-type]
        shard = self._plan_batches(train=train, batch_size=batch_size, drop_last=drop_last, rank=rank,
                                   world_size=world_size, seed=seed, mean=mean, std=std, device=torch.device(device))
        if shard is not None:
            self._shard = shard.tolist()
        self._pin = self.device.type == "cuda"
        self._dataset = _SeededDataset(dataset, transform)
        self._workers = workers
        self._loader = self._data_loader()
        self._epoch_iter: Generator[Any, None, None] | None = None

    def _data_loader(self) -> DataLoader:
        return DataLoader(
            self._dataset,
            batch_sampler=_PlanSampler(self),
            collate_fn=self.collate_fn,
            num_workers=self._workers,
            pin_memory=self._pin,
            persistent_workers=self._workers > 0,
            prefetch_factor=4 if self._workers > 0 else None,
            generator=torch.Generator(),  # its base seed is unused; keeps the global RNG untouched
        )

    def _batches(self) -> Iterator[list[Any]]:
        if not self.train:
            for start, stop in self._slices:
                yield self._shard[start:stop]
            return
        g = epoch_generator(self.seed, self._epoch)
        fit = self._layout.fit
        order = fit(torch.randperm(self.dataset_size, generator=g)).tolist()
        seeds = fit(torch.randint(0, 1 << 62, (self.dataset_size,), generator=g)).tolist()
        for start, stop in self._slices:
            yield list(zip(order[start:stop], seeds[start:stop]))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._epoch_iter = self._device_batches()
        return self._epoch_iter

    def _device_batches(self) -> Generator[Any, None, None]:
        for batch in self._loader:  # the workers start at the first batch asked for
            yield self._to_device(batch)

    def _to_device(self, batch: Any) -> Any:
        images, labels = batch
        images = images.to(self.device, non_blocking=self._pin)
        labels = labels.to(self.device, dtype=torch.int64, non_blocking=self._pin)
        return normalize(images, self._shift, self._scale), labels

    def close(self) -> None:
        """Stop the worker processes now; they persist across epochs, and a long-lived process
        (a notebook, ``biasloss reproduce``) would otherwise keep them until garbage collection.
        Iterating again starts new ones.

        The persistent workers belong to the DataLoader's iterator, which stops them when it is
        deleted: closing our epoch's generator (which may be half read) and dropping the
        DataLoader, which keeps the iterator too, for a fresh one deletes it.
        """
        if self._epoch_iter is not None:
            self._epoch_iter.close()
            self._epoch_iter = None
        if self._workers > 0:
            self._loader = self._data_loader()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.dataset_size}, batch_size={self.batch_size}, train={self.train}, "
                f"batches={len(self)}, rank={self.rank}/{self.world_size}, device={self.device}, "
                f"workers={self._workers})")


def _list_collate(batch: list[Any]) -> tuple[list[Any], list[Any]]:
    return tuple(map(list, zip(*batch)))  # type: ignore[return-value]


class DetectionLoader(FolderLoader):
    """Batches of ``(images, targets)`` as lists from a dataset of ``(float image, target dict)``
    that transforms its samples itself (:class:`biasloss.detection.VOCBoxes`): the order,
    sharding and per-sample seeding of :class:`FolderLoader` (exact resume, any number of workers
    or ranks), without stacking or normalising (detectors resize and normalise themselves).
    Images and target tensors are moved to ``device``."""

    collate_fn = staticmethod(_list_collate)

    def __init__(self, dataset: Dataset, *, batch_size: int, device: torch.device, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False, workers: int = 4) -> None:
        super().__init__(dataset, None, batch_size=batch_size, mean=(0.0,), std=(1.0,), device=device, train=train,
                         seed=seed, rank=rank, world_size=world_size, drop_last=drop_last, workers=workers)

    def _to_device(self, batch: Any) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        images, targets = batch
        return ([im.to(self.device, non_blocking=self._pin) for im in images],
                [{k: v.to(self.device, non_blocking=self._pin) for k, v in t.items()} for t in targets])
