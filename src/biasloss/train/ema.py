"""The exponential moving average of a model's weights that a recipe's ``ema_decay`` asks for."""

from __future__ import annotations

from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn

__all__ = ["ModelEma"]


class ModelEma(ModelEmaV3):
    """timm's :class:`~timm.utils.ModelEmaV3` (all floating point tensors of the state dict in one
    multi-tensor lerp a step, integer buffers copied; no host-device synchronisation), started
    as :class:`torch.optim.swa_utils.AveragedModel` starts: the first :meth:`update` copies the
    model, each later one moves the average ``1 - decay`` of the way towards it.

    The state dict is AveragedModel's (``module.<key>`` and ``n_averaged``, the number of
    updates), so checkpoints written with either load into both. The count lives on the host as
    well, so that choosing between copy and average never reads the device.
    """

    n_averaged: torch.Tensor

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, decay=decay)
        device = next(iter(self.module.parameters())).device
        self.register_buffer("n_averaged", torch.zeros((), dtype=torch.long, device=device))
        self._updates = 0
        self.register_load_state_dict_post_hook(ModelEma._count_loaded)

    @staticmethod
    def _count_loaded(module: ModelEma, incompatible: Any) -> None:
        module._updates = int(module.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Average ``model``'s current weights in (``step`` is ignored: the count is kept here)."""
        # timm's decay at step 1 is 0: the average becomes the model, exactly
        super().update(model, step=1 if self._updates == 0 else None)
        self._updates += 1
        self.n_averaged += 1
