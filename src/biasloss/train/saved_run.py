"""A finished or interrupted ``biasloss train`` run, read back from one of its checkpoints.

:func:`load_run` is the one way a checkpoint becomes a model and its data: ``eval``, ``export``,
``variance``, ``plot samples`` and ``reproduce`` all read runs through it. A :class:`SavedRun`
holds the run's settings (a :class:`~biasloss.train.settings.TrainConfig` with every option filled:
as given, else the recipe's, else the default; checkpoints of older versions lack some), the
training data's :class:`~biasloss.data.DatasetSpec` (its classes, channels, resolution and
normalisation: the evaluation transform) and builds the model with the weights ``train``
evaluated (the EMA's where the recipe kept one).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biasloss.data import DatasetSpec, get_dataset_spec
from biasloss.errors import InputError
from biasloss.losses import clamp_option
from biasloss.models import evaluated_weights
from biasloss.train.checkpoint import CheckpointError, load_checkpoint, training_args
from biasloss.train.settings import DEFAULTS, TrainConfig, build_model, trained_with

__all__ = ["SavedRun", "load_run"]


@dataclass(frozen=True)
class SavedRun:
    """A training run as its checkpoint ``path`` saved it (``checkpoint``: the file's contents)."""

    path: Path
    checkpoint: dict[str, Any]
    settings: TrainConfig
    spec: DatasetSpec

    @property
    def epoch(self) -> int:
        """Epochs completed (an interrupted epoch not counted)."""
        return int(self.checkpoint["epoch"])

    @property
    def weights(self) -> str:
        """Which weights :meth:`model` holds: ``"ema"`` or ``"model"``."""
        return evaluated_weights(self.checkpoint)[1]

    def model(self) -> nn.Module:
        """The run's model on the CPU, in eval mode, holding the weights ``train`` evaluated."""
        model = build_model(self.settings, self.spec)
        weights, _ = evaluated_weights(self.checkpoint)
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise CheckpointError(f"{self.path}: weights do not fit {self.settings.model}: "
                                  f"{str(e).splitlines()[0]}") from None
        return model.eval()

    def memory_format(self) -> torch.memory_format:
        """The memory format the run trained (and validated) in."""
        return torch.channels_last if self.settings.channels_last else torch.contiguous_format

    def bias_weighting(self) -> tuple[float, float, tuple[float, float] | None]:
        """``(alpha, beta, clamp)`` of the Bias Loss weights: the run's own where it trained with the
        Bias Loss, else the defaults (the paper's 0.3, 0.3 and [0.5, 1.5])."""
        own = self.settings.loss == "bias"
        alpha, beta, clamp = (getattr(self.settings, k) if own else DEFAULTS[k] for k in ("alpha", "beta", "clamp"))
        return float(alpha), float(beta), clamp_option(clamp)

    def spec_for(self, dataset: str | None) -> DatasetSpec:
        """The spec of ``dataset`` (default: the run's own) to evaluate the run on; a ``ValueError``
        when its classes or channels are not the run's."""
        if dataset is None or dataset == self.settings.dataset:
            return self.spec
        other = get_dataset_spec(dataset)
        if (other.num_classes, other.in_chans) != (self.spec.num_classes, self.spec.in_chans):
            raise InputError(f"the checkpoint was trained on {self.settings.dataset} ({self.spec.num_classes} "
                             f"classes, {self.spec.in_chans} channels) and cannot be evaluated on {dataset}")
        return other

    def data_options(self, dataset: str | None = None) -> dict[str, Any]:
        """``build_loaders`` options that read ``dataset`` (default: the run's own) as the run read it:
        its data directory and ``--limit`` when it is the run's dataset, its seed and batch size."""
        same = dataset is None or dataset == self.settings.dataset
        return {"data_dir": self.settings.data_dir if same else None, "limit": self.settings.limit if same else None,
                "seed": self.settings.seed, "batch_size": self.settings.batch_size}

    def describe(self) -> str:
        """``"<model> (<loss>, epoch N[, EMA]) on <dataset>"``."""
        ema = ", EMA" if self.weights == "ema" else ""
        return f"{self.settings.model} ({self.settings.loss}, epoch {self.epoch}{ema}) on {self.settings.dataset}"


def settings_of(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> TrainConfig:
    """Every option a checkpoint's run trained with (:func:`~biasloss.train.settings.trained_with`);
    :class:`CheckpointError` when it does not name its dataset and model."""
    training_args(ckpt, path)
    return TrainConfig(**copy.deepcopy(trained_with(ckpt, [field.name for field in dataclasses.fields(TrainConfig)])))


def load_run(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SavedRun:
    """The run a ``biasloss train`` checkpoint (``last.pt`` or ``best.pt``) saved:
    :class:`CheckpointError` when the file is missing, unreadable or not such a checkpoint."""
    ckpt = load_checkpoint(path, map_location)
    settings = settings_of(ckpt, path)
    spec = get_dataset_spec(settings.dataset)
    if ckpt.get("num_classes"):  # folder datasets: the classes found in the data
        spec = dataclasses.replace(spec, num_classes=int(ckpt["num_classes"]))
    return SavedRun(Path(path), ckpt, settings, spec)
