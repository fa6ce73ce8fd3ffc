"""What the Bias Loss does to a trained network's training set, in pictures (paper sec. 3, eq. 3).

:func:`sample_weights` runs a ``biasloss train`` checkpoint over its training split once, in the
training batch size and the first epoch's order, without augmentation, and gives every image the
variance of its last feature map and the Bias Loss weight ``z(v)`` that the batch scaling gives it
among the images of its batch (the checkpoint's alpha, beta and clamp). :func:`plot_samples` draws
the images weighed least and most, each with its variance and weight, and the histogram of the
weights over the epoch. Command: ``biasloss plot samples --checkpoint CKPT --out grid.png
--hist weights.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from biasloss._checks import positive
from biasloss.errors import InputError
from biasloss.losses import bias_weights, feature_variance

__all__ = ["SampleWeights", "plot_samples", "sample_weights"]


@dataclass
class SampleWeights:
    """Per training image: its index in the loader's order, variance and weight; the images kept
    for drawing (the ``count`` lowest and highest weights); what produced them."""

    variance: Tensor  # (N,) float32
    weight: Tensor  # (N,) float32
    lowest: list[tuple[Tensor, int, float, float]]  # (image C x H x W in [0, 1], label, variance, weight)
    highest: list[tuple[Tensor, int, float, float]]
    label: str
    alpha: float
    beta: float
    clamp: tuple[float, float] | None


def _keep(kept: list, images: Tensor, labels: Tensor, v: Tensor, w: Tensor, count: int, lowest: bool) -> list:
    """Merge a batch into the running ``count`` lowest (or highest) weights."""
    order = torch.argsort(w, descending=not lowest)[:count]
    kept = kept + [(images[i].float().cpu(), int(labels[i]), float(v[i]), float(w[i])) for i in order.tolist()]
    kept.sort(key=lambda item: item[3], reverse=not lowest)
    return kept[:count]


@torch.no_grad()
def sample_weights(
    checkpoint: str | Path, *, count: int = 8, limit: int | None = None, data_dir: str | None = None,
    device: str | torch.device | None = None,
) -> SampleWeights:
    """Variance and Bias Loss weight of every training image of a checkpoint's dataset.

    Args:
        checkpoint: a ``last.pt``/``best.pt`` of ``biasloss train`` (its evaluation weights).
        count: how many of the lowest- and highest-weighted images to keep for drawing.
        limit: only the first ``limit`` training images.
        data_dir: where the dataset lives (default: where the run found it).
        device: where the model runs (default: CUDA where there is one, else the CPU).
    """
    from biasloss.data import AugmentConfig, build_loaders
    from biasloss.features import forward_with_features
    from biasloss.train.distributed import resolve_device
    from biasloss.train.saved_run import load_run

    positive("count", count, kind=int)
    if limit is not None and limit < 2:
        raise InputError(f"limit must be at least 2, got {limit}")
    device = resolve_device(device)
    run = load_run(checkpoint)
    saved, options = run.settings, run.data_options()
    batch = options["batch_size"] or 128
    train_loader, _, spec = build_loaders(
        saved.dataset, data_dir=data_dir or options["data_dir"], batch_size=batch, eval_batch_size=batch,
        device=device, augment=AugmentConfig(), seed=options["seed"], workers=2, limit=limit or options["limit"],
    )
    model = run.model().to(device)
    alpha, beta, clamp = run.bias_weighting()
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    variances, weights, lowest, highest = [], [], [], []
    train_loader.set_epoch(0)
    try:
        for images, labels in train_loader:
            if images.shape[0] < 2:
                continue  # a batch of one has no spread to scale against
            _, features = forward_with_features(model, images)
            v = feature_variance(features)
            w = bias_weights(features, alpha=alpha, beta=beta, clamp=clamp)
            variances.append(v.cpu())
            weights.append(w.cpu())
            shown = (images * std + mean).clamp(0, 1)
            lowest = _keep(lowest, shown, labels, v, w, count, lowest=True)
            highest = _keep(highest, shown, labels, v, w, count, lowest=False)
    finally:
        train_loader.close()
    if not variances:
        raise InputError("no training batch of two or more images to weigh")
    return SampleWeights(torch.cat(variances), torch.cat(weights), lowest, highest, run.describe(), alpha, beta,
                         clamp)


def plot_samples(result: SampleWeights, out: str | Path, hist: str | Path | None = None) -> list[Path]:
    """Two rows of images (lowest and highest weights, each titled with variance and weight) to
    ``out``; the histogram of all weights to ``hist``. Returns the files written."""
    from biasloss.analysis._figures import check_out, figure, save

    out_path = check_out(out)
    hist_path = check_out(hist, "--hist") if hist is not None else None
    count = max(len(result.lowest), len(result.highest))
    fig, axes = figure(2, count, size=(1.6, 2.1))
    for row, title, items in zip((axes[:count], axes[count:]), ("lowest weight", "highest weight"),
                                 (result.lowest, result.highest)):
        for ax in row:
            ax.axis("off")
        for ax, (image, label, v, w) in zip(row, items):
            shown = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
            ax.imshow(shown.numpy(), cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1)
            ax.set_title(f"v={v:.5g}\nz={w:.3f} (y={label})", fontsize=7)
        row[0].text(-0.15, 0.5, title, transform=row[0].transAxes, rotation=90, va="center", ha="right", fontsize=9)
    fig.suptitle(f"Bias Loss weights of training images: {result.label}", fontsize=9)
    written = [save(fig, out_path)]
    if hist_path is not None:
        fig, (ax,) = figure()
        ax.hist(result.weight.numpy(), bins=50, color="#4477aa")
        clamp = "no clamp" if result.clamp is None else f"clamp [{result.clamp[0]:g}, {result.clamp[1]:g}]"
        ax.set_xlabel(f"weight z(v) (alpha {result.alpha:g}, beta {result.beta:g}, {clamp}, batch scaling)")
        ax.set_ylabel("training images")
        ax.set_title(f"{len(result.weight)} images, mean weight {result.weight.mean():.3f}: {result.label}",
                     fontsize=9)
        written.append(save(fig, hist_path))
    return written
