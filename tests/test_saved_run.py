"""``load_run``: one checkpoint, one model and its data, for every command; checkpoints of this and
older versions keep loading.

The fixtures (``tests/fixtures/checkpoints/*.json``) are checkpoints ``biasloss train`` wrote,
kept as their structure: every value that is not a tensor as it was, and each tensor's shape and
dtype (weights would make megabytes of binary files for nothing the tests read: the format is
what must keep loading). Rewrite them, after a deliberate change of the format, with
``BIASLOSS_UPDATE_FIXTURES=1 pytest tests/test_saved_run.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from biasloss.cli import main
from biasloss.train.checkpoint import CheckpointError, ForeignCheckpointError, save_checkpoint
from biasloss.train.saved_run import load_run

from conftest import write_imagenet

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"
_TENSOR = "__tensor__"


def _describe(value):
    """``value`` with each tensor replaced by its shape and dtype."""
    if isinstance(value, torch.Tensor):
        return {_TENSOR: [list(value.shape), str(value.dtype).removeprefix("torch.")]}
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    return value


def _rebuild(value, generator: torch.Generator):
    """A checkpoint of the described structure, tensors drawn at random (integers: zeros)."""
    if isinstance(value, dict) and _TENSOR in value:
        shape, dtype = value[_TENSOR]
        dtype = getattr(torch, dtype)
        if dtype.is_floating_point:
            return torch.randn(shape, generator=generator).to(dtype)
        return torch.zeros(shape, dtype=dtype)
    if isinstance(value, dict):
        return {k: _rebuild(v, generator) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebuild(v, generator) for v in value]
    return value


def _train_fixtures(tmp: Path) -> dict[str, Path]:
    """The runs the fixtures describe, trained now."""
    common = ["--no-progress", "--device", "cpu", "--epochs", "1"]
    assert main(["train", "--dataset", "digits", "--model", "test_efficientnet_gn", "--limit", "64",
                 "--batch-size", "32", *common, "--out", str(tmp / "digits")]) == 0
    write_imagenet(tmp / "imagenet", n_train=2, n_val=1)
    assert main(["train", "--dataset", "imagenet", "--data-dir", str(tmp / "imagenet"), "--recipe", "imagenet",
                 "--model", "skipblocknet_xs", "--batch-size", "2", "--workers", "1", "--loss", "focal",
                 *common, "--out", str(tmp / "ema")]) == 0
    return {"digits-bias": tmp / "digits" / "last.pt", "imagenet-ema-focal": tmp / "ema" / "last.pt"}


def _fixtures(tmp_path) -> dict[str, dict]:
    if os.environ.get("BIASLOSS_UPDATE_FIXTURES"):
        FIXTURES.mkdir(parents=True, exist_ok=True)
        for name, path in _train_fixtures(tmp_path).items():
            description = _describe(torch.load(path, map_location="cpu", weights_only=False))
            (FIXTURES / f"{name}.json").write_text(json.dumps(description, sort_keys=True) + "\n")
    return {p.stem: json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))}


def _write(description: dict, path: Path) -> Path:
    save_checkpoint(_rebuild(description, torch.Generator().manual_seed(0)), path)
    return path


def test_fixtures_of_this_version_load(tmp_path):
    fixtures = _fixtures(tmp_path)
    assert set(fixtures) == {"digits-bias", "imagenet-ema-focal"}

    run = load_run(_write(fixtures["digits-bias"], tmp_path / "digits.pt"))
    assert (run.settings.dataset, run.settings.model, run.settings.loss) == ("digits", "test_efficientnet_gn", "bias")
    assert run.settings.batch_size == 32 and run.settings.limit == 64 and run.settings.seed == 0
    assert run.settings.alpha == 0.3 and run.settings.clamp == [0.5, 1.5] and run.settings.loss_scale == 1.0
    assert run.spec.num_classes == 10 and run.weights == "model" and run.epoch == 1
    assert run.model()(torch.zeros(2, 1, 32, 32)).shape == (2, 10)

    ema = load_run(_write(fixtures["imagenet-ema-focal"], tmp_path / "ema.pt"))
    assert ema.weights == "ema" and ema.spec.num_classes == 3  # the folder's classes, saved with the run
    assert (ema.settings.recipe, ema.settings.loss, ema.settings.gamma) == ("imagenet", "focal", 2.0)
    assert ema.model().training is False
    assert "focal" in ema.describe() and "EMA" in ema.describe()


def test_a_checkpoint_of_an_older_version_gets_the_defaults(tmp_path):
    description = _fixtures(tmp_path)["digits-bias"]
    for key in ("loss_scale", "compile", "compile_mode", "channels_last", "amp", "batch_size", "alpha", "clamp"):
        description["args"].pop(key, None)  # options that older versions did not save
    run = load_run(_write(description, tmp_path / "old.pt"))
    assert run.settings.loss_scale == 1.0 and run.settings.compile is False and run.settings.channels_last
    assert run.settings.batch_size == description["recipe"]["batch_size"]  # the recipe's
    assert run.settings.alpha == 0.3 and run.settings.clamp == [0.5, 1.5]


def test_what_is_not_a_run(tmp_path):
    description = _fixtures(tmp_path)["digits-bias"]
    description["args"].pop("model")
    with pytest.raises(ForeignCheckpointError, match="naming its dataset and model"):
        load_run(_write(description, tmp_path / "nameless.pt"))
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state_dict.pt")
    with pytest.raises(ForeignCheckpointError, match="not a biasloss training checkpoint"):
        load_run(tmp_path / "state_dict.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_run(tmp_path / "missing.pt")
    detector = json.loads((FIXTURES.parent / "detect" / "scenes-ssdlite.json").read_text())
    with pytest.raises(ForeignCheckpointError, match="a detector's checkpoint .* 'biasloss detect eval'"):
        load_run(_write(detector, tmp_path / "detector.pt"))  # was: unknown dataset 'scenes'


def test_a_run_refuses_data_of_other_classes(tmp_path):
    run = load_run(_write(_fixtures(tmp_path)["digits-bias"], tmp_path / "digits.pt"))
    assert run.spec_for(None) is run.spec and run.data_options()["limit"] == 64
    assert run.data_options("fashion-mnist")["limit"] is None  # another dataset: all of it, from its own place
    with pytest.raises(ValueError, match="cannot be evaluated on cifar100"):
        run.spec_for("cifar100")
