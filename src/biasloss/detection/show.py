"""``biasloss detect show``: a picture of a detector's predictions next to the true boxes
(:func:`draw_detections`, :func:`add_legend`, :func:`run_detect_show`). A mAP says how good a
detector is on average; a picture says what it does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes, make_grid

from biasloss._checks import positive
from biasloss._io import atomic_write, writable_file
from biasloss.errors import InputError
from biasloss.train.train_cli import add_device_flag

__all__ = ["COLUMNS", "FORMATS", "MIN_SIDE", "PAD", "PRED_COLOR", "TRUE_COLOR", "TRUE_DASH_COLOR", "add_legend",
           "draw_detections", "legend_entries", "register_show", "run_detect_show"]

#: The true boxes' colour: white, 3 px wide, with black dashes (:data:`TRUE_DASH_COLOR`) along its
#: middle, so that one of the two stands out from whatever lies below (the scenes' backgrounds and
#: clutter take any colour of the RGB cube).
TRUE_COLOR = (255, 255, 255)
TRUE_DASH_COLOR = (0, 0, 0)  #: the dashes on the true boxes
PRED_COLOR = (255, 0, 0)  #: the predicted boxes' colour
MIN_SIDE = 256  # each scene is scaled up to at least this side
COLUMNS = 4  # scenes per grid row (fewer when fewer scenes)
PAD = 4  # white pixels between scenes
_WIDTH = 2  # predicted boxes' line width in pixels
_TRUE_WIDTH = 3  # true boxes' line width: a dash along the middle pixel, white on both sides
_DASH = 4  # dash and gap length in pixels
_SAMPLE, _ROW = 32, 16  # the legend's box samples' width and its rows' height, in pixels
#: What ``detect show --out`` writes, by its suffix (Pillow's format names); other suffixes are refused.
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".pdf": "PDF", ".tif": "TIFF", ".tiff": "TIFF",
           ".webp": "WEBP"}


def _name(classes: Sequence[str] | Mapping[int, str] | None, label: int) -> str:
    try:
        return str(classes[label]) if classes is not None else str(label)
    except (IndexError, KeyError):
        return str(label)


def _draw(image: torch.Tensor, boxes: torch.Tensor, labels: list[str] | None, color: tuple[int, int, int],
          scale: int, width: int = _WIDTH, dashes: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``boxes`` (scaled by ``scale``) in ``color``, ``width`` px wide, labelled; ``dashes``: the
    colour of dashes drawn along the middle of each box's line."""
    if len(boxes) == 0:
        return image
    h, w = image.shape[-2:]
    b = boxes.detach().float().cpu() * scale
    b[:, 2:] -= 1  # exclusive ends -> the last pixel, which PIL's rectangle includes
    b[:, 0::2], b[:, 1::2] = b[:, 0::2].clamp(0, w - 1), b[:, 1::2].clamp(0, h - 1)
    b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2])
    image = draw_bounding_boxes(image, b, labels, colors=color, width=width, fill_labels=True)
    if dashes is not None:
        dash = torch.tensor(dashes, dtype=torch.uint8)[:, None]
        for x0, y0, x1, y1 in b.long().tolist():
            m = width // 2  # the middle of the line, which PIL draws inwards from the box's edge
            x0, y0, x1, y1 = x0 + m, y0 + m, max(x0 + m, x1 - m), max(y0 + m, y1 - m)
            xs = [x for x in range(x0, x1 + 1) if (x - x0) // _DASH % 2 == 0]
            ys = [y for y in range(y0, y1 + 1) if (y - y0) // _DASH % 2 == 0]
            image[:, y0, xs], image[:, y1, xs] = dash, dash
            image[:, ys, x0], image[:, ys, x1] = dash, dash
    return image


@torch.no_grad()
def _draw_all(model: Any, dataset: Any, indices: Sequence[int], score_thresh: float,
              classes: Sequence[str] | Mapping[int, str] | None) -> tuple[torch.Tensor, int, int]:
    indices = list(indices)
    if not indices:
        raise InputError("indices must name at least one scene")
    n = len(dataset)
    bad = [i for i in indices if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n]
    if bad:
        raise InputError(f"indices must be in 0..{n - 1} (the data set has {n} scenes), got {bad}")
    if not (isinstance(score_thresh, (int, float)) and 0 <= score_thresh <= 1):
        raise InputError(f"score_thresh must be a number in [0, 1], got {score_thresh!r}")
    if getattr(model, "training", False):
        raise InputError("model must be in eval mode (call model.eval())")
    if classes is None:
        classes = getattr(dataset, "classes", None)
    params = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
    device = next(params, torch.empty(0)).device
    cells, n_true, n_pred = [], 0, 0
    for i in indices:
        image, target = dataset[i]
        pred = model([image.to(device)])[0]
        keep = pred["scores"] >= score_thresh
        scale = max(1, math.ceil(MIN_SIDE / min(image.shape[-2:])))
        cell = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        cell = cell.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        cell = _draw(cell, target["boxes"], [_name(classes, int(c)) for c in target["labels"]], TRUE_COLOR, scale,
                     _TRUE_WIDTH, TRUE_DASH_COLOR)
        names = [f"{_name(classes, int(c))} {float(s):.2f}" for c, s in zip(pred["labels"][keep], pred["scores"][keep])]
        cell = _draw(cell, pred["boxes"][keep], names, PRED_COLOR, scale)
        cells.append(cell)
        n_true, n_pred = n_true + len(target["boxes"]), n_pred + int(keep.sum())
    h, w = max(c.shape[-2] for c in cells), max(c.shape[-1] for c in cells)
    cells = [torch.nn.functional.pad(c, (0, w - c.shape[-1], 0, h - c.shape[-2])) for c in cells]
    return make_grid(cells, nrow=min(COLUMNS, len(cells)), padding=PAD, pad_value=255), n_true, n_pred


def draw_detections(model: Any, dataset: Any, indices: Sequence[int], *, score_thresh: float = 0.5,
                    classes: Sequence[str] | Mapping[int, str] | None = None) -> torch.Tensor:
    """The scenes ``dataset[i]`` for ``i`` in ``indices`` in one uint8 (3, H, W) grid image
    (:data:`COLUMNS` a row, :data:`PAD` white pixels apart; smaller scenes padded with black at the
    bottom right), each scaled up by a whole factor to at least :data:`MIN_SIDE` px a side, with
    its true boxes in :data:`TRUE_COLOR` dashed with :data:`TRUE_DASH_COLOR` and the boxes
    ``model`` (an eval-mode torchvision detector) predicts with a score of at least
    ``score_thresh`` in :data:`PRED_COLOR`; no legend (:func:`add_legend` adds one).
    ``classes[label]`` names a label (default ``dataset.classes``, else the label's number).

    Raises:
        ValueError: no indices, one outside the data set, ``score_thresh`` outside [0, 1], or a
            model in training mode.
    """
    return _draw_all(model, dataset, indices, score_thresh, classes)[0]


def legend_entries(score_thresh: float) -> list[tuple[str, str]]:
    """What the picture's two kinds of box mean: ``(kind, text)``, ``kind`` ``"truth"`` or
    ``"prediction"``."""
    return [("truth", "true box: white with black dashes, its class"),
            ("prediction", f"predicted box: red, its class and score (the detector's confidence in "
                           f"that class, 0-1; boxes scoring >= {score_thresh:g} drawn)")]


def _wrap(text: str, font: Any, width: float) -> list[str]:
    """``text`` in lines of at most ``width`` pixels in ``font`` (a longer word has its own line)."""
    lines = [""]
    for word in text.split():
        if lines[-1] and font.getlength(f"{lines[-1]} {word}") > width:
            lines.append(word)
        else:
            lines[-1] = f"{lines[-1]} {word}".strip()
    return lines


def add_legend(grid: torch.Tensor, score_thresh: float) -> torch.Tensor:
    """``grid`` (a uint8 (3, H, W) image of :func:`draw_detections`) over a white band as wide,
    holding the legend: each of :func:`legend_entries` after a sample of its box on grey (where
    both tones of a true box show), its text wrapped to the width."""
    font = ImageFont.load_default()
    width = grid.shape[-1]
    rows = [(kind if i == 0 else "", line) for kind, text in legend_entries(score_thresh)
            for i, line in enumerate(_wrap(text, font, width - _SAMPLE - 3 * PAD))]
    band = torch.full((3, 2 * PAD + _ROW * len(rows), width), 255, dtype=torch.uint8)
    for r, (kind, _) in enumerate(rows):
        y = PAD + r * _ROW
        if kind:
            band[:, y:y + _ROW - 2, PAD:PAD + _SAMPLE] = 128
            box = torch.tensor([[PAD + 2, y + 2, PAD + _SAMPLE - 2, y + _ROW - 4]], dtype=torch.float32)
            band = (_draw(band, box, None, TRUE_COLOR, 1, _TRUE_WIDTH, TRUE_DASH_COLOR) if kind == "truth"
                    else _draw(band, box, None, PRED_COLOR, 1))
    image = to_pil_image(band)
    draw = ImageDraw.Draw(image)
    for r, (_, line) in enumerate(rows):
        draw.text((_SAMPLE + 2 * PAD, PAD + r * _ROW + 1), line, fill="black", font=font)
    return torch.cat([grid, pil_to_tensor(image)], dim=1)


def run_detect_show(args: Any) -> Path:
    """Draw ``args.indices`` (or the first ``args.images``) scenes of a ``biasloss detect train``
    checkpoint's test split with its predictions; write the image ``args.out`` atomically, in the
    format its suffix names (:data:`FORMATS`: PNG, JPEG, PDF, TIFF, WebP; another suffix is an
    :class:`~biasloss.errors.InputError` naming ``--out``, before any work)."""
    from biasloss.detection.train import dataset_split, detector_from_checkpoint
    from biasloss.train.distributed import resolve_device

    images = positive("--images", 8 if getattr(args, "images", None) is None else args.images)
    score_thresh = 0.5 if getattr(args, "score_thresh", None) is None else args.score_thresh
    if not 0 <= score_thresh <= 1:
        raise InputError(f"--score-thresh must be in [0, 1], got {score_thresh}")
    suffix = Path(args.out).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"--out {str(args.out)!r}: cannot write a {suffix or 'suffix-less'} image; end it in "
                         f"{', '.join(FORMATS)} (the format follows the suffix)")
    out = writable_file(args.out)
    device = resolve_device(getattr(args, "device", None))
    model, cfg = detector_from_checkpoint(args.checkpoint, device)
    cfg = dataclasses.replace(cfg, data_dir=getattr(args, "data_dir", None) or cfg.data_dir, limit=None)
    test = dataset_split(cfg, train=False)
    indices = list(args.indices) if getattr(args, "indices", None) else list(range(min(images, len(test))))
    grid, n_true, n_pred = _draw_all(model, test, indices, score_thresh, None)
    image = Image.fromarray(add_legend(grid, score_thresh).permute(1, 2, 0).numpy())
    atomic_write(out, lambda f: image.save(f, format=FORMATS[suffix]))  # Pillow: torchvision.io's is deprecated
    print(f"wrote {out}: {len(indices)} test images of {cfg.dataset} ({cfg.test_year} {cfg.test_set}), "
          f"{n_true} true boxes (white, dashed) and {n_pred} predicted boxes with score >= {score_thresh} (red)")
    return out


def register_show(sub: Any) -> None:
    """``biasloss detect show``, on the ``detect`` sub-command's subparsers ``sub``."""
    s = sub.add_parser("show", help="draw a few test scenes with the predicted and true boxes (a PNG)",
                       description="Draw test scenes of a 'detect train' checkpoint's test split, scaled up to "
                                   "at least 256 px, with the true boxes white with black dashes and the "
                                   "predicted boxes in red with their class and score (the detector's "
                                   "confidence, 0-1), as one PNG grid with a legend below: a look at the "
                                   "detections before trusting a mAP.")
    s.add_argument("--checkpoint", required=True, help="a 'biasloss detect train' checkpoint (last.pt, best.pt)")
    s.add_argument("--out", required=True, help="the image file to write: .png, .jpg, .pdf, .tif or .webp "
                                                 "(the format follows the suffix)")
    s.add_argument("--images", type=int, default=8, help="draw the first N test scenes (default 8)")
    s.add_argument("--indices", type=int, nargs="+", metavar="I", help="draw these test scenes instead")
    s.add_argument("--score-thresh", type=float, default=0.5,
                   help="draw predicted boxes scoring at least this, in [0, 1] (default 0.5)")
    s.add_argument("--data-dir", help="the folder holding VOCdevkit/ (default: the checkpoint's)")
    add_device_flag(s)
    s.set_defaults(func=_show)


def _show(args: Any) -> int:
    run_detect_show(args)
    return 0
