"""What each dataset is (classes, channels, resolution, normalisation) and what augmentation a recipe asks for."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AugmentConfig",
    "DATASETS",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "get_dataset_spec",
]


class DatasetNotFoundError(FileNotFoundError):
    """The data is not where we looked. The message is one line: the paths tried and how to get the data."""


class DatasetCorruptError(ValueError):
    """The files are there but are not in the expected format (bad magic, truncated, wrong shapes)."""


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of a dataset as the model sees it.

    ``image_size`` is the train/eval resolution fed to the model (digits are stored at 8 px and
    resized to 32 px once at load time). ``in_memory`` selects the uint8-tensor-on-device path;
    ``small_input`` asks the model for its small-input (stride 8) stem (True for <= 64 px).
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_memory: bool
    small_input: bool


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
            raise ValueError(f"crop_padding must be an int >= 0, got {self.crop_padding!r}")
        if not isinstance(self.rotation, (int, float)) or isinstance(self.rotation, bool):
            raise TypeError(f"rotation must be a number of degrees, got {self.rotation!r}")
        if not 0.0 <= float(self.rotation) <= 180.0:
            raise ValueError(f"rotation must be in [0, 180] degrees, got {self.rotation!r}")

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.rotation > 0 or self.random_resized_crop


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetSpec] = {
    # Statistics of the 60,000 training images (computed from the Debian package's files).
    "fashion-mnist": DatasetSpec("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), True, True),
    # scikit-learn's 8x8 digits, resized once to 32x32 (bilinear) so that stride-8 models see a
    # 4x4 map; statistics of all 1,797 resized images.
    "digits": DatasetSpec("digits", 10, 1, 32, (0.3052,), (0.3236,), True, True),
    "cifar10": DatasetSpec(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True, True
    ),
    # Normalisation as in the paper's CIFAR-100 recipe (SPEC section 3).
    "cifar100": DatasetSpec(
        "cifar100", 100, 3, 32, (0.507, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761), True, True
    ),
    "imagenet": DatasetSpec("imagenet", 1000, 3, 224, _IMAGENET_MEAN, _IMAGENET_STD, False, False),
    # Fine-tuned from ImageNet weights (SPEC section 3): ImageNet statistics.
    "food101": DatasetSpec("food101", 101, 3, 224, _IMAGENET_MEAN, _IMAGENET_STD, False, False),
}


def get_dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered under ``name``; ``ValueError`` listing the known names otherwise."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]
