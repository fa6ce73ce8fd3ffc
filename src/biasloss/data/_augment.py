"""Batched augmentation of uint8 images held on the device, without per-sample Python loops.

Images are stored NHWC (so that a batch, seen as NCHW, is channels-last). Random crop with
padding and horizontal flip are one gather from the (pre-padded) dataset tensor: row ``i`` of
sample ``b`` reads padded row ``oy[b] + i``, column ``j`` reads padded column ``ox[b] + j`` or,
when flipped, ``ox[b] + W - 1 - j``. Rotation is one ``affine_grid`` + ``grid_sample`` call per
batch. Random parameters are drawn once per epoch for every position of the epoch's order
(:func:`draw_params`), so they are a pure function of (seed, epoch) and independent of the
number of ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._specs import AugmentConfig

__all__ = ["EpochParams", "crop_flip", "draw_params", "normalize", "pad_images", "rotate"]


@dataclass
class EpochParams:
    """Per-position random parameters of one epoch (each ``(positions,)`` or ``None`` when unused)."""

    oy: torch.Tensor | None = None     # crop offsets into the padded image, in [0, 2 * padding]
    ox: torch.Tensor | None = None
    flip: torch.Tensor | None = None   # bool
    angle: torch.Tensor | None = None  # degrees, float32

    def map(self, fn) -> "EpochParams":
        """Apply ``fn`` to every parameter tensor that is set."""
        return EpochParams(*(None if t is None else fn(t) for t in (self.oy, self.ox, self.flip, self.angle)))


def draw_params(n: int, augment: AugmentConfig, generator: torch.Generator) -> EpochParams:
    """Draw crop offsets, flips and angles for ``n`` positions, always in this order."""
    p = EpochParams()
    if augment.crop_padding > 0:
        p.oy = torch.randint(0, 2 * augment.crop_padding + 1, (n,), generator=generator)
        p.ox = torch.randint(0, 2 * augment.crop_padding + 1, (n,), generator=generator)
    if augment.hflip:
        p.flip = torch.rand(n, generator=generator) < 0.5
    if augment.rotation > 0:
        p.angle = (torch.rand(n, generator=generator) * 2 - 1) * float(augment.rotation)
    return p


def pad_images(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad NHWC images by ``padding`` pixels on each side of H and W."""
    if padding == 0:
        return images
    return F.pad(images, (0, 0, padding, padding, padding, padding))


def crop_flip(
    padded: torch.Tensor,
    index: torch.Tensor,
    size: tuple[int, int],
    oy: torch.Tensor | None,
    ox: torch.Tensor | None,
    flip: torch.Tensor | None,
) -> torch.Tensor:
    """Gather ``index``'s samples from NHWC ``padded`` with per-sample crop offsets and flips.

    Returns ``(B, H, W, C)`` (contiguous), ``(H, W) = size``. With ``oy``/``ox`` ``None`` the crop is
    the centre (offset ``(Hp - H) // 2``); with ``flip`` ``None`` nothing is flipped.
    """
    h, w = size
    device = padded.device
    b = index.shape[0]
    if oy is None or ox is None:
        if flip is None and padded.shape[1] == h and padded.shape[2] == w:
            return padded[index]
        oy = torch.full((b,), (padded.shape[1] - h) // 2, dtype=torch.long, device=device)
        ox = torch.full((b,), (padded.shape[2] - w) // 2, dtype=torch.long, device=device)
    n, hp, wp, c = padded.shape
    # Rows first: one index_select of B*H padded rows, then one gather of W columns per row.
    rows = (index[:, None] * hp + oy[:, None] + torch.arange(h, device=device)).reshape(-1)  # (B*H,)
    x = padded.reshape(n * hp, wp, c).index_select(0, rows).view(b, h, wp, c)
    cols_r = torch.arange(w, device=device)
    if flip is None:
        cols = ox[:, None] + cols_r  # (B, W)
    else:
        cols = ox[:, None] + torch.where(flip[:, None], (w - 1) - cols_r, cols_r)
    return x.gather(2, cols[:, None, :, None].expand(b, h, w, c))


def rotate(x: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Rotate each image of float ``(B, C, H, W)`` ``x`` by its angle (degrees), bilinear, zero fill.

    Positive angles turn the content counter-clockwise on screen. The sampling grid is built with
    elementwise ops (what ``F.affine_grid`` computes for a pure rotation, several times faster on
    the CPU); the input is made NCHW-contiguous, ``grid_sample``'s fast layout on the CPU.
    """
    b, _, h, w = x.shape
    rad = angle_deg.to(device=x.device, dtype=torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(rad).view(b, 1, 1), torch.sin(rad).view(b, 1, 1)
    # Normalised pixel centres (align_corners=False): (2 i + 1) / size - 1.
    gx = ((torch.arange(w, device=x.device, dtype=torch.float32) * 2 + 1) / w - 1).view(1, 1, w)
    gy = ((torch.arange(h, device=x.device, dtype=torch.float32) * 2 + 1) / h - 1).view(1, h, 1)
    if h != w:  # rotate in pixel units, not in normalised units
        ax, ay = gx * (w / 2), gy * (h / 2)
        grid = torch.stack([(cos * ax - sin * ay) / (w / 2), (sin * ax + cos * ay) / (h / 2)], -1)
    else:
        grid = torch.stack([cos * gx - sin * gy, sin * gx + cos * gy], -1)  # (B, H, W, 2): output -> input
    x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def normalize(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(x - shift) * scale`` in float32, channels-last; ``shift = 255 * mean``, ``scale = 1 / (255 * std)``."""
    x = x.to(torch.float32).sub_(shift).mul_(scale)
    return x.contiguous(memory_format=torch.channels_last)
