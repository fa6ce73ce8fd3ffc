"""Training under torchrun ends the same way on every rank: no rank waits in a collective that
another rank has left (2 CPU processes, gloo). Each test would hang under NCCL without its fix;
here gloo's own timeout and a deadline on the processes turn a hang into a failure."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from biasloss import BiasLoss
from biasloss.train.engine import ClassifierObjective, ModelWithFeatures, NonFiniteLossError, train_one_epoch

WORLD = 2
DEADLINE_S = 120


def _spawn(worker, *args) -> None:
    """Run ``worker(rank, *args)`` on 2 ranks; fail (and kill them) if they are not done in time."""
    context = mp.spawn(worker, args=args, nprocs=WORLD, join=False)
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish in {DEADLINE_S} s: a rank waits in a collective")


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward_features(self, x):
        return self.conv(x)

    def forward_head(self, x):
        return self.fc(x.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class _NaNOnRank1(nn.Module):
    """Cross-entropy, NaN on rank 1 from step ``at`` on (at a check step: rank 0 is still finite there)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.calls, self.at = 0, at

    def forward(self, logits, target, features):
        self.calls += 1
        loss = nn.functional.cross_entropy(logits, target)
        return loss * float("nan") if dist.get_rank() == 1 and self.calls >= self.at else loss


def _epoch(rank: int, init_file: str, criterion: nn.Module, **kwargs):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=30))
    torch.manual_seed(0)
    model = _Tiny()
    net = nn.parallel.DistributedDataParallel(ModelWithFeatures(model))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    g = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(4, 1, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(8)]
    return train_one_epoch(net, ClassifierObjective(criterion), optimizer, scheduler, batches, epoch=0, seed=0,
                           device=torch.device("cpu"), rank=rank, progress=False, **kwargs)


def _non_finite_worker(rank: int, init_file: str, out: str) -> None:
    try:
        _epoch(rank, init_file, _NaNOnRank1(at=4), check_every=4)
        outcome = "finished"
    except NonFiniteLossError as e:
        outcome = f"NonFiniteLossError: {e}"
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump(outcome, f)


def _stop_worker(rank: int, init_file: str, out: str) -> None:
    calls = []

    def should_stop() -> bool:  # SIGTERM reached rank 0 after its second step, rank 1 never
        calls.append(1)
        return rank == 0 and len(calls) >= 2

    try:
        result = _epoch(rank, init_file, BiasLoss(), check_every=3, should_stop=should_stop)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump({"steps": result.steps, "interrupted": result.interrupted, "samples": result.samples}, f)


def _outcomes(tmp_path) -> list:
    return [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(WORLD)]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_non_finite_loss_on_one_rank_ends_the_epoch_on_every_rank(tmp_path):
    _spawn(_non_finite_worker, str(tmp_path / "init"), str(tmp_path))
    zero, one = _outcomes(tmp_path)
    assert one.startswith("NonFiniteLossError: training loss became nan by epoch 1, step 4"), one
    assert zero == "NonFiniteLossError: training loss became non-finite on another rank by epoch 1, step 4", zero


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_stop_seen_by_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    _spawn(_stop_worker, str(tmp_path / "init"), str(tmp_path))
    zero, one = _outcomes(tmp_path)
    # rank 0 asked after step 2; the ranks agree at the next check, step 3, and count both ranks' samples
    assert zero == one == {"steps": 3, "interrupted": True, "samples": 3 * 4 * WORLD}


def _torchrun(torchrun: str, *args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", str(WORLD), "-m", "biasloss", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, **kwargs)


def test_uneven_evaluation_shards_with_the_bias_loss(tmp_path, torchrun):
    # 257 test images, evaluation batch 64: three batches on rank 0 (129 images), two on rank 1; the Bias Loss
    # must not all-reduce per evaluation batch (gloo aborted with "collective mismatch")
    proc = _torchrun(torchrun, "train", "--dataset", "digits", "--limit", "257", "--epochs", "1",
                     "--eval-batch-size", "64", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run"))
    try:
        out, err = proc.communicate(timeout=DEADLINE_S * 2)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("torchrun did not finish: a rank waits in a collective")
    assert proc.returncode == 0, err[-3000:]
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= line["val_top1"] <= 100 and len(line["val_class_top1"]) == 10


def test_sigterm_to_the_group_stops_every_rank_and_writes_last_pt(tmp_path, torchrun):
    run = tmp_path / "run"
    proc = _torchrun(torchrun, "train", "--dataset", "digits", "--epochs", "50", "--batch-size", "16",
                     "--no-progress", "--device", "cpu", "--out", str(run))
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not (run / "metrics.jsonl").exists():  # the first epoch is done: the group is training
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the ranks did not stop after SIGTERM: a rank waits in a collective")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "continue with --resume" in out or "resume with --resume" in out, out[-2000:] + err[-2000:]
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert 1 <= ckpt["epoch"] < 50


def test_each_rank_draws_its_own_dropout_masks():
    from biasloss.train.engine import step_seed

    assert step_seed(3, 2, 5) == step_seed(3, 2, 5, rank=0)  # one process: the seeds it always had
    assert len({step_seed(3, 2, 5, rank=r) for r in range(8)}) == 8
    assert step_seed(3, 2, 5, rank=1) != step_seed(3, 2, 6, rank=0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
