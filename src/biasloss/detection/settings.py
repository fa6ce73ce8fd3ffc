"""What a ``biasloss detect train`` run trains, as data: :class:`DetectConfig`. A checkpoint keeps it
as a plain dict, as every version wrote it (:meth:`DetectConfig.to_checkpoint`, :meth:`~DetectConfig.from_checkpoint`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["IDENTITY", "OPTIONS", "SIZE_FLAG", "DetectConfig", "flag", "saved_options"]

#: What defines a detection run; a resume must not change it.
IDENTITY = ("dataset", "model", "head", "init", "seed", "size", "batch_size", "lr", "weight_decay", "limit",
            "year", "train_set", "test_year", "test_set")
#: The options a checkpoint records (``args``): the run's identity and how it trains.
OPTIONS = (*IDENTITY, "epochs", "workers", "data_dir", "amp", "channels_last", "compile", "progress", "stop_after")
#: How messages name ``size``: ``--image-size``, and ``--size``, its old name, still accepted.
SIZE_FLAG = "--image-size/--size"
#: Settings of checkpoints written before they were recorded.
_OLDER_CHECKPOINTS: dict[str, Any] = {"head": "ssd"}


@dataclasses.dataclass
class DetectConfig:
    """The settings of a ``biasloss detect train`` run, resolved: the command line over the resumed
    checkpoint's over the data set's (:data:`biasloss.detection.train.DATASETS`). One field per
    option of the command (``--image-size`` is ``size``, the name checkpoints use); ``out``,
    ``resume`` and ``device`` say where it runs and are not saved."""

    dataset: str
    data_dir: str
    model: str
    head: str
    year: str
    train_set: str
    test_year: str
    test_set: str
    size: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int = 0
    workers: int = 0
    init: str | None = None
    limit: int | None = None
    stop_after: int | None = None
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    progress: bool | None = None
    out: str | None = None
    resume: str | None = None
    device: str | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        """The ``args`` a checkpoint records: every option but ``out``, ``resume`` and ``device``."""
        return {key: getattr(self, key) for key in OPTIONS}

    @classmethod
    def from_checkpoint(cls, args: Mapping[str, Any], **defaults: Any) -> DetectConfig:
        """The settings a checkpoint's ``args`` record, an older checkpoint's missing ones from
        ``defaults`` (then this class's); keys of no option are dropped."""
        return cls.from_mapping({**defaults, **saved_options(args)})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DetectConfig:
        """The settings ``values`` holds; keys of no option are dropped."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def saved_options(args: Mapping[str, Any]) -> dict[str, Any]:
    """The options a checkpoint's ``args`` record, with the values of those an older version did
    not record yet."""
    return _OLDER_CHECKPOINTS | {key: value for key, value in args.items() if key in OPTIONS}


def flag(key: str) -> str:
    """The ``detect train`` flag of the setting ``key``: ``batch_size`` -> ``--batch-size``, ``size``
    -> :data:`SIZE_FLAG`."""
    return SIZE_FLAG if key == "size" else f"--{key.replace('_', '-')}"
