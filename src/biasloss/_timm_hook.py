"""SkipblockNet and the CIFAR zoo join timm's registry when timm is imported, not before.

The promise of ``import biasloss`` is that ``timm.create_model("skipblocknet_m")`` and
``timm.create_model("cifar_resnet18")`` work after it. Registering means importing timm (and
torchvision under it), about twice the time of torch alone, which every ``biasloss --version``
would pay. So :func:`install`, run by ``import biasloss``, registers the models at once only
where timm is already imported; otherwise it puts a finder on ``sys.meta_path`` that waits for
the first ``import timm`` and, once timm's own ``__init__`` has run, imports
:data:`MODEL_MODULES` (whose ``@register_model`` does the registering) before that import
returns. Then the finder is gone. This module imports nothing heavy.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

__all__ = ["MODEL_MODULES", "install", "register_models"]

#: the modules whose import registers biasloss's models with timm
MODEL_MODULES = ("biasloss.models", "biasloss.models.cifar")


def register_models() -> None:
    """Import :data:`MODEL_MODULES`. A module already being imported (timm imported on its way,
    as ``import biasloss.models`` does) is left to finish: it registers its models itself."""
    for name in MODEL_MODULES:
        importlib.import_module(name)


class _RegisterAfter(importlib.abc.Loader):
    """timm's own loader, then :func:`register_models`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # timm sees only its own loader
        self.loader.exec_module(module)
        register_models()


class _TimmFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands timm's spec on, its loader wrapped in :class:`_RegisterAfter`."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        _remove()
        spec = importlib.util.find_spec("timm")  # the finders after this one
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfter(spec.loader)
        return spec


def _remove() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _TimmFinder)]


def install() -> None:
    """Register the models now if timm is imported, else at its import (see the module doc)."""
    if "timm" in sys.modules:
        _remove()
        register_models()
    elif not any(isinstance(finder, _TimmFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TimmFinder())
