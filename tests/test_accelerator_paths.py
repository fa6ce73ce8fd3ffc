"""What the GPU paths of training rely on, checked on the CPU: one compilation per run, the CUDA
backend settings, multi-tensor EMA and RMSProp steps (with the numerics they replaced)."""

from __future__ import annotations

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from biasloss.models import create_model
from biasloss.train.distributed import configure_backends
from biasloss.train.ema import ModelEma
from biasloss.train.recipes import build_optimizer, get_recipe
from biasloss.train.runner import TrainConfig, run_train

_COMPILE = torch.compile


def _compiles(monkeypatch, tmp_path, limit: int) -> list[tuple[int, bool]]:
    """Train one epoch of digits with ``--compile`` on a backend that records, for every graph it
    is given (and runs as traced), its number of inputs and whether any input shape is symbolic."""
    graphs: list[tuple[int, bool]] = []

    def backend(gm, example_inputs):
        symbolic = any(isinstance(d, torch.SymInt) for t in example_inputs if isinstance(t, torch.Tensor)
                       for d in t.shape)
        graphs.append((len(example_inputs), symbolic))
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda model, mode=None, **kw: _COMPILE(model, backend=backend))
    torch._dynamo.reset()
    run_train(TrainConfig(dataset="digits", model="mobilenetv3_small_050", loss="bias", epochs=1, batch_size=64,
                          limit=limit, compile=True, device="cpu", progress=False, out=str(tmp_path / f"l{limit}")))
    return graphs


def test_a_compiled_run_compiles_its_step_once(monkeypatch, tmp_path):
    # 200 images at batch 64: three whole batches and a short one of 8, which used to trace a second
    # graph inside the timed epoch (with a dynamic batch); 192 images: whole batches only
    short, whole = _compiles(monkeypatch, tmp_path, 200), _compiles(monkeypatch, tmp_path, 192)
    assert short == whole and len(short) >= 1
    assert not any(symbolic for _, symbolic in short), short
    metrics = (tmp_path / "l200" / "metrics.jsonl").read_text()
    assert '"epoch": 1' in metrics


def test_configure_backends_speeds_up_cuda_and_leaves_the_cpu_alone():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        configure_backends(torch.device("cpu"))
        assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        configure_backends(torch.device("cuda", 0))
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _train_steps(model, averages, steps: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model.train()
        model(torch.randn(4, 1, 28, 28, generator=g)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        for average in averages:
            if isinstance(average, AveragedModel):
                average.update_parameters(model)
            else:
                average.update(model)


def test_model_ema_averages_as_averaged_model_did_and_loads_its_checkpoints():
    torch.manual_seed(0)
    model = create_model("skipblocknet_xs", num_classes=10, in_chans=1, small_input=True)
    old = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    new = ModelEma(model, 0.9)
    _train_steps(model, [old, new], 3)
    old_state, new_state = old.state_dict(), new.state_dict()
    assert old_state.keys() == new_state.keys()  # checkpoints keep their layout
    for key, value in old_state.items():
        if value.is_floating_point():  # the weights: bit for bit (BatchNorm's batch counters are copied now)
            assert torch.equal(value, new_state[key]), key
    assert int(new.n_averaged) == 3
    resumed = ModelEma(model, 0.9)
    resumed.load_state_dict(old_state)  # an old run's EMA continues: averaged, not copied, at its next update
    _train_steps(model, [old, resumed], 2)
    for key, value in old.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, resumed.state_dict()[key]), key


def test_the_imagenet_recipe_steps_rmsprop_with_multi_tensor_kernels():
    pytest.importorskip("timm.optim")
    model = create_model("skipblocknet_xs", num_classes=10)
    optimizer = build_optimizer(model, get_recipe("imagenet"))
    assert type(optimizer).__name__ == "RMSpropTF"
    assert all(group.get("foreach") for group in optimizer.param_groups)


def test_every_ema_buffer_lives_on_the_models_device(monkeypatch):
    # under NCCL, broadcast_buffers broadcasts every EMA buffer: AveragedModel kept n_averaged on
    # the CPU whatever the model's device; the meta device stands in for CUDA here
    meta = torch.device("meta")
    model = create_model("skipblocknet_xs", num_classes=10, in_chans=1, small_input=True).to(meta)
    assert AveragedModel(model).n_averaged.device.type == "cpu"  # the old EMA
    real_generator = torch.Generator
    monkeypatch.setattr(torch, "Generator",  # timm's bf16 rounding generator: meta has none
                        lambda device="cpu": real_generator("cpu" if device == meta else device))
    ema = ModelEma(model, 0.9)
    assert {b.device for b in ema.buffers()} == {meta} and {p.device for p in ema.parameters()} == {meta}
