"""Scaling synced across ranks equals one process on the concatenated batch (2 CPU processes, gloo)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from biasloss import BiasLoss, bias_loss

WORLD = 2


def _batch():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(8, 4, 3, 3, generator=g) * torch.linspace(0.1, 3.0, 8).view(8, 1, 1, 1)
    logits = torch.randn(8, 5, generator=g)
    target = torch.randint(0, 5, (8,), generator=g)
    return logits, target, features


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        logits, target, features = _batch()
        # rank 0 takes the low-variance half, so the per-rank min/max differ from the global ones
        shard = slice(rank * 4, (rank + 1) * 4)
        for scaling in ("batch", "running_min", "rank"):
            criterion = BiasLoss(scaling=scaling)  # sync="auto": on, since world size is 2
            loss = criterion(logits[shard], target[shard], features[shard])
            torch.save(
                {"weights": criterion.last_weights, "loss": loss, "running_min": criterion.running_min},
                os.path.join(out_dir, f"{scaling}-{rank}.pt"),
            )
        per = bias_loss(logits[shard], target[shard], features[shard], reduction="none", sync=True)
        torch.save(per, os.path.join(out_dir, f"functional-{rank}.pt"))
        # rank scaling over shards of unequal size (3 and 5): the global ranks all the same
        uneven = slice(0, 3) if rank == 0 else slice(3, 8)
        criterion = BiasLoss(scaling="rank")
        criterion(logits[uneven], target[uneven], features[uneven])
        torch.save(criterion.last_weights, os.path.join(out_dir, f"uneven-{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_synced_weights_equal_single_process_on_concatenated_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    logits, target, features = _batch()
    for scaling in ("batch", "running_min", "rank"):
        single = BiasLoss(scaling=scaling, sync=False)
        single(logits, target, features)
        parts = [torch.load(tmp_path / f"{scaling}-{r}.pt") for r in range(WORLD)]
        torch.testing.assert_close(torch.cat([p["weights"] for p in parts]), single.last_weights)
        for p in parts:
            torch.testing.assert_close(p["running_min"], single.running_min)
        # the global mean loss is the mean of the per-rank means (equal shard sizes)
        torch.testing.assert_close(
            torch.stack([p["loss"] for p in parts]).mean(), single(logits, target, features)
        )
    per = torch.cat([torch.load(tmp_path / f"functional-{r}.pt") for r in range(WORLD)])
    torch.testing.assert_close(per, bias_loss(logits, target, features, reduction="none"))
    # and the synced result really differs from scaling each shard on its own
    unsynced = torch.cat([bias_loss(logits[s], target[s], features[s], reduction="none")
                          for s in (slice(0, 4), slice(4, 8))])
    assert not torch.allclose(unsynced, per)
    single = BiasLoss(scaling="rank", sync=False)
    single(logits, target, features)
    uneven = torch.cat([torch.load(tmp_path / f"uneven-{r}.pt") for r in range(WORLD)])
    torch.testing.assert_close(uneven, single.last_weights)
