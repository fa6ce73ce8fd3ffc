"""Which samples each rank sees in each epoch, as a pure function of (seed, epoch).

Training order: one global permutation per epoch, drawn from a CPU ``torch.Generator`` seeded with
``seed * 1000003 + epoch``. Global batch ``k`` is positions ``[k*G, (k+1)*G)`` of that permutation
(``G = batch_size * world_size``); rank ``r`` takes the ``r``-th contiguous ``1/world_size`` of
it. So the union over ranks of batch ``k`` is the single-process batch ``k`` at batch size ``G``,
every rank sees the same number of batches, and per-sample random draws indexed by position do
not depend on the number of ranks.

Without ``drop_last`` the permutation is padded by wrapping around to a multiple of
``world_size`` (as ``DistributedSampler`` does; padded positions repeat the first ones, random
augmentation parameters included) and the last global batch is short but splits
evenly over ranks; with ``drop_last`` only whole global batches are kept.

Evaluation: rank ``r`` takes samples ``r, r + W, r + 2W, ...`` in order, without padding, so the
ranks together cover the test split exactly once (ranks may differ by one sample, and so by at
most one batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from biasloss.errors import InputError

__all__ = ["EpochLayout", "epoch_generator", "eval_shard", "train_layout"]

_SEED_MULT = 1000003


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded with ``seed * 1000003 + epoch`` (mod 2**63)."""
    g = torch.Generator()
    g.manual_seed((int(seed) * _SEED_MULT + int(epoch)) % (1 << 63))
    return g


@dataclass(frozen=True)
class EpochLayout:
    """Sizes of one training epoch; positions index the (padded) global permutation."""

    n: int            # samples in the dataset
    total: int        # positions used this epoch over all ranks (n rounded to whole global batches)
    batch_size: int   # per rank
    world_size: int
    num_batches: int  # per rank, the same on every rank

    @property
    def num_samples(self) -> int:
        """Samples each rank sees per epoch."""
        return self.total // self.world_size

    def rank_slices(self, rank: int) -> list[tuple[int, int]]:
        """[start, stop) positions of each of ``rank``'s batches."""
        g = self.batch_size * self.world_size
        out = []
        for k in range(self.num_batches):
            start = k * g
            per_rank = min(g, self.total - start) // self.world_size
            out.append((start + rank * per_rank, start + (rank + 1) * per_rank))
        return out

    def fit(self, per_position: torch.Tensor) -> torch.Tensor:
        """Cut, or pad by wrapping around, a tensor of ``n`` per-position values to ``total`` positions.

        Applied to the permutation and to every per-position random draw (always drawn for ``n``
        positions), so a padded position repeats position ``i - n`` exactly, and nothing drawn
        depends on ``world_size``.
        """
        if self.total <= self.n:
            return per_position[: self.total]
        return per_position[torch.arange(self.total) % self.n]


def train_layout(n: int, batch_size: int, world_size: int, drop_last: bool) -> EpochLayout:
    if n <= 0:
        raise InputError("the training split is empty")
    g = batch_size * world_size
    if drop_last:
        num_batches = n // g
        if num_batches == 0:
            raise InputError(
                f"drop_last with batch_size {batch_size} x world_size {world_size} = {g} > {n} training "
                "samples leaves no batch")
        total = num_batches * g
    else:
        total = math.ceil(n / world_size) * world_size
        num_batches = math.ceil(total / g)
    return EpochLayout(n, total, batch_size, world_size, num_batches)


def eval_shard(n: int, rank: int, world_size: int) -> torch.Tensor:
    """Indices of the test split that ``rank`` evaluates (strided, no padding)."""
    return torch.arange(rank, n, world_size)


class EpochBatches:
    """What both loaders share: the epoch selected by ``set_epoch``, the batch slices of this rank,
    the normalisation constants, and ``len``."""

    _slices: list[tuple[int, int]]

    def _plan_batches(self, *, train: bool, batch_size: int, drop_last: bool, rank: int, world_size: int, seed: int,
                      mean, std, device: torch.device) -> torch.Tensor | None:
        """Keep the arguments, set ``num_samples`` and the slices; returns the eval shard (None when training)."""
        self.device, self.batch_size, self.train, self.seed = device, batch_size, train, seed
        self.rank, self.world_size = rank, world_size
        self._epoch = 0
        self._shift = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255.0
        self._scale = 1.0 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255.0)
        if train:
            self._layout = train_layout(self.dataset_size, batch_size, world_size, drop_last)
            self._slices = self._layout.rank_slices(rank)
            self.num_samples = self._layout.num_samples
            return None
        shard = eval_shard(self.dataset_size, rank, world_size)
        self.num_samples = int(shard.numel())
        self._slices = [(s, min(s + batch_size, self.num_samples)) for s in range(0, self.num_samples, batch_size)]
        return shard

    def __len__(self) -> int:
        return len(self._slices)

    def close(self) -> None:
        """Release what the loader holds between epochs (worker processes); nothing here."""

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise InputError(f"epoch must be an int >= 0, got {epoch!r}")
        self._epoch = epoch
