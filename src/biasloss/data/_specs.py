"""What a dataset is (classes, channels, resolution, normalisation, how it is read) and what
augmentation a recipe asks for. The datasets themselves are :data:`biasloss.data.DATASETS`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from biasloss.errors import DatasetCorruptError, DatasetNotFoundError, InputError, InputTypeError

__all__ = [
    "AugmentConfig",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "DatasetSpec",
]


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of a dataset as the model sees it.

    ``image_size`` is the train/eval resolution fed to the model (digits are stored at 8 px and
    resized to 32 px once at load time). ``in_memory`` selects the uint8-tensor-on-device path;
    ``small_input`` asks the model for its small-input (stride 8) stem (True for <= 64 px).
    ``recipe`` names the training recipe it gets without ``--recipe``. ``read(data_dir, *,
    download)`` reads it: an in-memory dataset's ``ArrayData``, a folder dataset's ``(train, test,
    classes)`` (map-style datasets of ``(PIL image, label)`` and the class names).
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_memory: bool
    small_input: bool
    recipe: str
    read: Callable[..., Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation chosen by a recipe. The defaults mean no augmentation.

    crop_padding: random crop of the original size after zero padding by this many pixels per side.
    hflip: random horizontal flip with probability 0.5.
    rotation: rotation by an angle drawn uniformly from [-rotation, rotation] degrees, per sample
        (bilinear, zero fill).
    random_resized_crop: large (folder) datasets only: Inception-style random-resized crop for
        training. Evaluation always resizes to image_size * 256 / 224 and centre-crops image_size.
    """

    crop_padding: int = 0
    hflip: bool = False
    rotation: float = 0.0
    random_resized_crop: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise InputError(f"crop_padding must be an int >= 0, got {self.crop_padding!r}")
        if not isinstance(self.rotation, (int, float)) or isinstance(self.rotation, bool):
            raise InputTypeError(f"rotation must be a number of degrees, got {self.rotation!r}")
        if not 0.0 <= float(self.rotation) <= 180.0:
            raise InputError(f"rotation must be in [0, 180] degrees, got {self.rotation!r}")

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.rotation > 0 or self.random_resized_crop
