"""The in-memory loader for small datasets: a uint8 tensor on the device, augmented per batch there.

After airbench: no worker processes, the epoch order is a ``randperm``, batches are gathers,
and augmentation is batched tensor ops (see :mod:`._augment`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from biasloss.errors import InputError

from ._augment import EpochParams, crop_flip, draw_params, normalize, pad_images, rotate
from ._plan import EpochBatches, epoch_generator
from ._specs import AugmentConfig

__all__ = ["InMemoryLoader"]


class InMemoryLoader(EpochBatches):
    """Batches of ``(images, labels)`` from NHWC uint8 ``images`` and int64 ``labels``.

    Yields float32 normalised ``(B, C, H, W)`` channels-last images and int64 ``(B,)`` labels, both
    on ``device``. ``train=True``: shuffled, augmented, sharded over ranks per
    :mod:`._plan` (a pure function of ``(seed, epoch)``; call :meth:`set_epoch` before each epoch).
    ``train=False``: the rank's strided shard in order, never augmented.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        train: bool,
        augment: AugmentConfig = AugmentConfig(),
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise InputError(f"images must be uint8 (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise InputError(f"labels must be (N,) with N = {images.shape[0]}, got {tuple(labels.shape)}")
        device = torch.device(device)
        self.augment = augment if train else AugmentConfig()
        self.image_size = (int(images.shape[1]), int(images.shape[2]))
        self.dataset_size = int(images.shape[0])
        channels = images.shape[3]
        if len(mean) != channels or len(std) != channels:
            raise InputError(f"mean/std have {len(mean)}/{len(std)} entries for {channels} channels")
        # Moved to the device once; padded once for random crops.
        self._images = pad_images(images.to(device), self.augment.crop_padding).contiguous()
        self._labels = labels.to(device=device, dtype=torch.int64)
        shard = self._plan_batches(train=train, batch_size=batch_size, drop_last=drop_last, rank=rank,
                                   world_size=world_size, seed=seed, mean=mean, std=std, device=device)
        if shard is not None:
            self._shard = shard.to(self.device)

    def _epoch_plan(self) -> tuple[torch.Tensor, EpochParams]:
        if not self.train:
            return self._shard, EpochParams()
        g = epoch_generator(self.seed, self._epoch)
        fit = self._layout.fit
        order = fit(torch.randperm(self.dataset_size, generator=g))
        params = draw_params(self.dataset_size, self.augment, g)
        return order.to(self.device), params.map(lambda t: fit(t).to(self.device))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, p = self._epoch_plan()
        for start, stop in self._slices:
            idx = order[start:stop]
            q = p.map(lambda t: t[start:stop])  # noqa: B023 - applied at once
            # NCHW view of NHWC memory: channels-last
            x = crop_flip(self._images, idx, self.image_size, q.oy, q.ox, q.flip).permute(0, 3, 1, 2)
            if q.angle is not None:
                x = rotate(x, q.angle)
            yield normalize(x, self._shift, self._scale), self._labels[idx]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.dataset_size}, batch_size={self.batch_size}, train={self.train}, "
                f"batches={len(self)}, rank={self.rank}/{self.world_size}, device={self.device}, augment={self.augment})")
