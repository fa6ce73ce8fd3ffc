"""``biasloss plot``: the paper's figures, from the formula and from result files.

Paper: "Bias Loss for Mobile Neural Networks", Abrahamyan et al., ICCV 2021.

- ``weights`` (Figure 2): the weight ``z(v) = exp(alpha * v) - beta`` against the scaled variance
  ``v`` for several ``alpha``/``beta``, with the ``[0.5, 1.5]`` clamp of section 5 drawn as a band
  (solid: the weight used, dashed: the unclamped formula where the clamp cuts it).
- ``loss`` (Figure 3, :func:`plot_loss`): cross-entropy beside ``z(v) * CE`` at several scaled
  variances, against the softmax probability of correct and of incorrect predictions. With the clamp
  and ``alpha = beta = 0.3`` the weights lie in ``[0.70, 1.05]``: the Bias Loss scales cross-entropy
  down by up to 30 % for low-variance samples and up by at most 5 %.
- ``tradeoff`` (Figures 1, 5, 6): top-1 against MACs and against parameters, the paper's Table 1
  built in, the user's results beside it, SkipblockNet highlighted.
- ``curves``: learning curves (``val_top1``, losses, ...) of several training runs overlaid.

matplotlib (optional) draws on the Agg canvas only, see :mod:`._figures`; the output format follows the file
suffix: ``.png``, ``.svg`` or ``.pdf``.

Results files for ``tradeoff`` (``--results``): JSON (one object or a list of objects) or JSON lines,
each object with

- ``name`` or ``model`` (and optionally ``label``, shown in the legend instead);
- ``top1`` in percent (``val_top1`` is accepted too);
- ``macs`` and/or ``params``: counts (``236622048``) or strings with a unit (``"236.6M"``, ``"1.4G"``);
- optionally ``dataset`` (shown beside the label).

Objects with the same label (else name/model) are merged, later files winning, so the output of
``biasloss profile --json`` and of ``biasloss eval --json`` can be given together.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from biasloss._checks import positive_flags
from biasloss.analysis._figures import check_out, figure, save, style
from biasloss.errors import InputError, InputFileNotFoundError, MissingDependencyError
from biasloss.losses.bias import DEFAULT_CLAMP, check_clamp, weight_function
from biasloss.paper import PAPER_ALPHA_BETA as PAPER_CHOICE

__all__ = [
    "MissingDependencyError",
    "load_metrics",
    "load_results",
    "plot_curves",
    "plot_loss",
    "plot_tradeoff",
    "plot_weights",
    "register",
    "save",
]

_SKIPBLOCK_COLOR = "#d62728"
_USER_COLOR = "#1f77b4"


def _check_float(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _greek(alpha: float, beta: float) -> str:
    return f"α = {alpha:g}, β = {beta:g}"


def _pairs(alphas: Sequence[float] | None, betas: Sequence[float] | None) -> list[tuple[float, float]]:
    alphas = list(alphas) if alphas else [PAPER_CHOICE[0]]
    betas = list(betas) if betas else [PAPER_CHOICE[1]]
    if len(alphas) == 1:
        alphas = alphas * len(betas)
    if len(betas) == 1:
        betas = betas * len(alphas)
    if len(alphas) != len(betas):
        raise InputError(f"give as many --alpha as --beta values (or one of either): "
                         f"got {len(alphas)} and {len(betas)}")
    return [(_check_float("alpha", a), _check_float("beta", b)) for a, b in zip(alphas, betas)]


def _draw_weights(ax, pairs: Sequence[tuple[float, float]], clamp, title: str) -> None:
    import matplotlib

    v = torch.linspace(0, 1, 201, dtype=torch.float64)
    cmap = matplotlib.colormaps["tab10"]
    highs = []
    for i, (a, b) in enumerate(pairs):
        raw = weight_function(v, a, b, None)
        used = weight_function(v, a, b, clamp)
        paper = (a, b) == PAPER_CHOICE
        color = "black" if paper else cmap(i % 10)
        label = _greek(a, b) + ("  (paper)" if paper else "")
        ax.plot(v, used, color=color, linewidth=2.6 if paper else 1.8, label=label, zorder=3 if paper else 2)
        if clamp is not None and not torch.equal(raw, used):
            cut = raw.masked_fill(raw == used, float("nan"))
            ax.plot(v, cut, color=color, linewidth=1.0, linestyle="--", alpha=0.8)
        highs.append(float(used.max()))
    lo = min(0.4, min(1 - b for _, b in pairs) - 0.05)
    hi = max(highs) + 0.1
    if clamp is not None:
        hi = min(max(1.6, hi), clamp[1] + 0.6)
        ax.axhspan(lo - 1, clamp[0], color="0.6", alpha=0.15, linewidth=0)
        ax.axhspan(clamp[1], hi + 1, color="0.6", alpha=0.15, linewidth=0,
                   label=f"clamped away (outside [{clamp[0]:g}, {clamp[1]:g}])")
        for level in clamp:
            ax.axhline(level, color="0.4", linewidth=0.8, linestyle=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(lo, hi)
    style(ax, "scaled variance v", "weight z(v) = exp(αv) − β", title)
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, frameon=False)


def plot_weights(
    out: str | Path,
    *,
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
    clamp: Sequence[float] | None = DEFAULT_CLAMP,
) -> Path:
    """Figure 2: ``z(v)`` for several ``(alpha, beta)``.

    Without ``alphas``/``betas``: two panels, (a) beta varying at alpha 0.3 (beta sets the floor
    ``1 - beta``: low-variance samples count less), (b) alpha varying at beta 0.3 (alpha sets how
    fast high-variance samples gain weight). With them: one panel with the pairs (a single value
    of either is repeated). ``clamp=None`` draws the raw formula.
    """
    path = check_out(out)
    clamp = check_clamp(clamp)
    clamp_note = f", clamped to [{clamp[0]:g}, {clamp[1]:g}]" if clamp else ", no clamp"
    if alphas is None and betas is None:
        fig, (ax1, ax2) = figure(1, 2, size=(6.4, 5.2))
        _draw_weights(ax1, [(0.3, b) for b in (0.0, 0.1, 0.3, 0.5)], clamp,
                      "(a) β varies: the floor 1 − β down-weights low variance")
        _draw_weights(ax2, [(a, 0.3) for a in (0.1, 0.3, 0.6, 1.0, 1.5)], clamp,
                      "(b) α varies: the rise for high variance")
    else:
        fig, (ax,) = figure(1, 1, size=(7.0, 5.2))
        _draw_weights(ax, _pairs(alphas, betas), clamp, None)
    fig.suptitle(f"Bias Loss weight z(v) = exp(αv) − β{clamp_note} (paper: Figure 2)", fontsize=12)
    return save(fig, path)


def plot_loss(
    out: str | Path,
    *,
    alpha: float = 0.3,
    beta: float = 0.3,
    variances: Sequence[float] = (0.0, 0.5, 1.0),
    clamp: Sequence[float] | None = DEFAULT_CLAMP,
) -> Path:
    """Figure 3: cross-entropy and ``z(v) * CE`` against the softmax probability.

    (a) correct predictions: x is the probability ``p`` of the true (= predicted) class, loss
    ``-log p``. (b) incorrect predictions: x is the probability ``q`` of the wrongly predicted
    class; the true class has at most ``1 - q``, and the curves show that best case
    ``-log(1 - q)`` (a lower bound: with more classes the true class can get less). The shaded
    area is every value the Bias Loss can take for ``v`` in ``[0, 1]``.
    """
    path = check_out(out)
    alpha, beta = _check_float("alpha", alpha), _check_float("beta", beta)
    clamp = check_clamp(clamp)
    variances = [_check_float("variance", v) for v in variances]
    if not variances:
        raise InputError("give at least one scaled variance")
    import matplotlib

    prob = torch.linspace(0.005, 0.995, 400, dtype=torch.float64)
    z_all = weight_function(torch.linspace(0, 1, 101, dtype=torch.float64), alpha, beta, clamp)
    z_min, z_max = float(z_all.min()), float(z_all.max())
    cmap = matplotlib.colormaps["viridis"]
    fig, axes = figure(1, 2)
    panels = (
        ("(a) correct predictions", "probability of the true class p", -torch.log(prob)),
        ("(b) incorrect predictions", "probability of the predicted (wrong) class q;  true class: 1 − q",
         -torch.log1p(-prob)),
    )
    for ax, (title, xlabel, ce) in zip(axes, panels):
        ax.fill_between(prob, z_min * ce, z_max * ce, color="0.75", alpha=0.35, linewidth=0,
                        label=f"L_bias for v ∈ [0, 1]  (z ∈ [{z_min:.2f}, {z_max:.2f}])")
        ax.plot(prob, ce, color="black", linewidth=2.4, label="L_ce = −log p")
        for i, v in enumerate(variances):
            z = float(weight_function(torch.tensor([v], dtype=torch.float64), alpha, beta, clamp)[0])
            color = cmap(0.15 + 0.7 * i / max(1, len(variances) - 1))
            ax.plot(prob, z * ce, color=color, linewidth=1.8, linestyle=("--", "-.", ":", "-")[i % 4],
                    label=f"L_bias, v = {v:g}  (z = {z:.2f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 5)
        style(ax, xlabel, "loss", title)
        ax.legend(fontsize=9, loc="upper center" if ax is axes[0] else "upper left", framealpha=0.9)
    clamp_note = f", clamp [{clamp[0]:g}, {clamp[1]:g}]" if clamp else ", no clamp"
    fig.suptitle(f"Cross-entropy vs Bias Loss L_bias = z(v)·L_ce  ({_greek(alpha, beta)}{clamp_note}; "
                 f"paper: Figure 3)", fontsize=12)
    return save(fig, path)


_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgb]?)\s*$", re.IGNORECASE)


def _quantity(value: Any, what: str, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and (m := _QUANTITY.match(value)):
        number = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise InputError(f"{where}: {what} must be a count or a string like '5.5M', got {value!r}")
    if not math.isfinite(number) or number <= 0:
        raise InputError(f"{where}: {what} must be positive, got {value!r}")
    return number


def _read_json_records(path: Path) -> list[Any]:
    if not path.exists():
        raise InputFileNotFoundError(f"results file not found: {path}", path)
    if path.is_dir():
        raise InputError(f"results file is a directory: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read results file {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path} line {number}: not JSON ({e.msg})") from None
    return data if isinstance(data, list) else [data]


def _setting(record: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """``(input side, classes, channels)`` a record was measured at: a ``profile --json`` record's
    ``setup``, or an ``eval --json`` record's dataset; ``None`` where it says neither."""
    setup = record.get("setup")
    if isinstance(setup, Mapping) and isinstance(setup.get("input_shape"), list) and len(setup["input_shape"]) == 4:
        _, chans, side, _ = setup["input_shape"]
        return int(side), int(setup.get("num_classes") or 0), int(chans)
    if isinstance(record.get("dataset"), str):
        from biasloss.data import DATASETS

        spec = DATASETS.get(record["dataset"])
        if spec is not None:
            return spec.image_size, spec.num_classes, spec.in_chans
    return None


def _describe_setting(setting: tuple[int, int, int]) -> str:
    side, classes, chans = setting
    return f"{side} px, {classes} classes, {chans} channel{'s' if chans > 1 else ''}"


def load_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read results files (see the module docstring) into ``{"label", "top1", "macs", "params",
    "dataset"}`` dicts, merged by label; ``macs``/``params`` are counts or ``None``. Records of one
    label merge only when they were measured at one setting (input size, classes, channels: a
    ``profile --json`` at 224 px and 1000 classes does not give its MACs to a digits model's
    ``eval --json``); an :class:`~biasloss.errors.InputError` names the two otherwise."""
    merged: dict[str, dict[str, Any]] = {}
    for raw_path in paths:
        path = Path(raw_path)
        for i, record in enumerate(_read_json_records(path), 1):
            where = f"{path} record {i}"
            if not isinstance(record, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if {"settings", "rows"} <= record.keys():
                raise InputError(f"{path} is the results of 'biasloss reproduce' (losses compared on one grid), "
                                 "not models with MACs: give 'biasloss profile MODEL --json' and "
                                 "'biasloss eval --json' outputs")
            name = record.get("name") or record.get("model")
            label = record.get("label") or name
            if not isinstance(label, str) or not label:
                raise InputError(f"{where}: needs a 'name' (or 'model' or 'label')")
            entry = merged.setdefault(label, {"label": label, "name": name,
                                              "top1": None, "macs": None, "params": None, "dataset": None,
                                              "setting": None, "where": where})
            setting = _setting(record)
            if setting is not None:
                if entry["setting"] is not None and entry["setting"] != setting:
                    raise InputError(
                        f"{where}: {label} at {_describe_setting(setting)} cannot merge with {entry['where']} at "
                        f"{_describe_setting(entry['setting'])}: profile the model as it was trained (biasloss "
                        f"profile {label} --input-size {setting[0]} --num-classes {setting[1]} --in-chans "
                        f"{setting[2]} --json), or label the records apart")
                entry["setting"], entry["where"] = setting, where
            top1 = record.get("top1", record.get("val_top1"))
            if top1 is not None:
                if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 <= top1 <= 100:
                    raise InputError(f"{where}: top1 must be a percentage in [0, 100], got {top1!r}")
                entry["top1"] = float(top1)
            for key in ("macs", "params"):
                if record.get(key) is not None:
                    entry[key] = _quantity(record[key], key, where)
            if record.get("dataset"):
                entry["dataset"] = str(record["dataset"])
            if name:
                entry["name"] = name
    return list(merged.values())


def _is_skipblock(name: str | None) -> bool:
    return bool(name) and "skipblock" in name.lower()


# Families drawn as connected lines, in the paper's order of size.
_FAMILIES = {
    "SkipblockNet": ("SkipblockNet-XS", "SkipblockNet-S", "SkipblockNet-M", "SkipblockNet-L"),
    "MUXNet": ("MUXNet-xs", "MUXNet-s", "MUXNet-m", "MUXNet-l"),
    "MobileNetV3 Large": ("MobileNetV3 Large 0.75x", "MobileNetV3 Large 1.0x", "MobileNetV3 Large 1.25x"),
}


def _draw_tradeoff(ax, key: str, paper: bool, user: Sequence[Mapping[str, Any]], xlabel: str) -> list:
    """Draw one panel; returns the labels to place, ``(x, y, text, text kwargs, marker area)``."""
    from biasloss.paper import PAPER_TABLE1

    labels = []
    if paper:
        by_name = {e.name: e for e in PAPER_TABLE1}
        for family, members in _FAMILIES.items():
            xs = [getattr(by_name[m], key) / 1e6 for m in members]
            ys = [by_name[m].top1 for m in members]
            sk = family == "SkipblockNet"
            ax.plot(xs, ys, color=_SKIPBLOCK_COLOR if sk else "0.6", linewidth=2.0 if sk else 1.0,
                    zorder=2 if sk else 1)
        # SkipblockNet first: its labels get the best places
        for e in sorted(PAPER_TABLE1, key=lambda e: not _is_skipblock(e.name)):
            sk = _is_skipblock(e.name)
            x = getattr(e, key) / 1e6
            ax.scatter([x], [e.top1], s=130 if sk else 28, marker="*" if sk else "o",
                       color=_SKIPBLOCK_COLOR if sk else "0.45", edgecolors="black" if sk else "none",
                       linewidths=0.6, zorder=4 if sk else 3,
                       label=("SkipblockNet + Bias Loss (paper)" if e.name == "SkipblockNet-XS" else
                              "other compact CNNs (paper)" if e.name == "MobileNetV2 0.5x" else None))
            text_style = (dict(fontsize=8.5, fontweight="bold", color=_SKIPBLOCK_COLOR) if sk
                     else dict(fontsize=7.5, color="0.25"))
            labels.append((x, e.top1, e.name, text_style, 130 if sk else 28))
    for r in user:
        if r["top1"] is None or r[key] is None:
            continue
        sk = _is_skipblock(r["name"]) or _is_skipblock(r["label"])
        label = r["label"] + (f" ({r['dataset']})" if r.get("dataset") else "")
        ax.scatter([r[key] / 1e6], [r["top1"]], s=110, marker="D", color=_SKIPBLOCK_COLOR if sk else _USER_COLOR,
                   edgecolors="black", linewidths=1.2 if sk else 0.5, zorder=6, label=f"{label} (ours)")
        labels.insert(0, (r[key] / 1e6, r["top1"], r["label"],
                          dict(fontsize=8.5, fontstyle="italic", color=_SKIPBLOCK_COLOR if sk else _USER_COLOR), 110))
    style(ax, xlabel, "top-1 accuracy (%)")
    ax.margins(x=0.14, y=0.08)
    return labels


# Candidate label positions around a point, nearest first: distance from the marker's edge (pt),
# direction, alignment. Labels placed away from their marker get a leader line.
_DIRECTIONS = [(1, 0, "left", "center"), (-1, 0, "right", "center"), (1, 1, "left", "bottom"),
               (1, -1, "left", "top"), (-1, 1, "right", "bottom"), (-1, -1, "right", "top"),
               (0, 1, "center", "bottom"), (0, -1, "center", "top")]
_SPOTS = [(d, (dx, dy), ha, va) for d in (3, 11, 21) for dx, dy, ha, va in _DIRECTIONS]


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _annotate(ax, text: str, xy: tuple[float, float], offset: tuple[float, float], ha: str, va: str,
              text_style: Mapping[str, Any], leader: bool):
    """One label, ``offset`` points from its point; ``leader``: with a line back to the point."""
    return ax.annotate(text, xy, xytext=offset, textcoords="offset points", ha=ha, va=va, zorder=7,
                       arrowprops=dict(arrowstyle="-", color="0.55", linewidth=0.5, shrinkA=0, shrinkB=3)
                       if leader else None, **text_style)


def _separate(anns: Sequence, renderer, dpi: float, gap: float = 2.0, rounds: int = 1000) -> None:
    """Nudge labels apart until no two text boxes overlap, ``rounds`` times at most: each overlapping
    pair moves apart, half each, along the axis where the overlap is smaller, to ``gap`` pixels;
    repeated, as one move can push a label into a third. The boxes move in pixels; the labels'
    offsets (points) follow once."""
    import numpy as np
    from matplotlib.text import Text

    for a in anns:
        a.update_positions(renderer)
    # x0 y0 x1 y1 of the texts alone (an annotation's own extent includes its leader line)
    boxes = np.array([Text.get_window_extent(a, renderer).extents for a in anns], dtype=float).reshape(-1, 4)
    start, n = boxes.copy(), len(boxes)
    pairs = np.triu(np.ones((n, n), dtype=bool), 1)
    for _ in range(rounds):
        x0, y0, x1, y1 = boxes.T
        w = np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0) + gap
        h = np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0) + gap
        i, j = np.nonzero(pairs & (w > 0) & (h > 0))
        if not len(i):
            break
        vertical = h[i, j] <= w[i, j]
        need = np.where(vertical, h[i, j], w[i, j]) / 2
        centre = np.where(vertical[:, None], (y0 + y1)[None], (x0 + x1)[None])  # per pair, along its axis
        sign = np.where(centre[np.arange(len(i)), i] >= centre[np.arange(len(i)), j], 1.0, -1.0)  # tie: i up/right
        shift = np.zeros((n, 2))
        np.add.at(shift, (i, vertical.astype(int)), sign * need)
        np.add.at(shift, (j, vertical.astype(int)), -sign * need)
        boxes += np.hstack([shift, shift])
    for ann, (dx, dy) in zip(anns, (boxes[:, :2] - start[:, :2]) * 72.0 / dpi):
        if dx or dy:
            ox, oy = ann.xyann
            ann.xyann = (ox + dx, oy + dy)


def _place_labels(ax, labels: Sequence[tuple]) -> None:
    """Annotate points greedily: each label goes to the candidate spot that overlaps least with
    the labels already placed, the markers, the lines and the axes' edge; then labels that still
    overlap (points too close for any spot) are nudged apart, with a line back to their point."""
    import numpy as np
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()  # final layout and limits, so that display coordinates hold
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData
    frame = ax.get_window_extent(renderer)
    points = [to_px.transform((x, y)) for x, y, *_ in labels]
    # marker area is in pt^2; a margin keeps a label nearer its own point than any other
    radii = [math.sqrt(size) / 2 * fig.dpi / 72 + 2 for *_, size in labels]
    obstacles = [Bbox.from_extents(px - r, py - r, px + r, py + r) for (px, py), r in zip(points, radii)]
    t = np.linspace(0, 1, 40)[:, None, None]  # 40 points along every segment of every line
    line_px = [np.zeros((0, 2))]
    for line in ax.get_lines():
        xy = to_px.transform(np.asarray(line.get_xydata(), dtype=float))
        line_px.append((xy[:-1] + t * (xy[1:] - xy[:-1])).reshape(-1, 2))
    line_px = np.vstack(line_px)
    legend = ax.get_legend()
    placed = [legend.get_window_extent(renderer)] if legend is not None else []
    chosen = []  # per label: its annotation, spot (offset, points), alignment and whether it has a leader line
    for i, (x, y, text, text_style, size) in enumerate(labels):
        best = None
        for distance, (dx, dy), ha, va in _SPOTS:
            far = distance > 3
            d = distance + math.sqrt(size) / 2  # from the marker's edge
            ann = _annotate(ax, text, (x, y), (dx * d, dy * d), ha, va, text_style, far)
            box = ann.get_window_extent(renderer)
            outside = box.width * box.height - _overlap(box, frame)
            cost = (sum(_overlap(box, o) for o in placed) * 10 + outside * 10
                    + sum(_overlap(box, o) for j, o in enumerate(obstacles) if j != i) * 3
                    + (40.0 if far else 0.0))
            inside = ((line_px[:, 0] > box.x0) & (line_px[:, 0] < box.x1)
                      & (line_px[:, 1] > box.y0) & (line_px[:, 1] < box.y1))
            cost += 4.0 * float(inside.sum())
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box, (ann, (dx * d, dy * d), ha, va, far))
            else:
                ann.remove()
            if cost == 0:
                break
        placed.append(best[2])
        chosen.append(best[3])
    _separate([ann for ann, *_ in chosen], renderer, fig.dpi)
    for (ann, spot, ha, va, leader), (x, y, text, text_style, _) in zip(chosen, labels):
        if not leader and math.dist(ann.xyann, spot) > 4:  # moved off its spot: a line shows whose it is
            offset = ann.xyann
            ann.remove()
            _annotate(ax, text, (x, y), offset, ha, va, text_style, True)


def plot_tradeoff(
    out: str | Path,
    *,
    results: Sequence[str | Path] | Sequence[Mapping[str, Any]] = (),
    x: str = "both",
    paper: bool = True,
    title: str | None = None,
) -> Path:
    """Figures 1 and 5 (and 6 with transfer results): top-1 against MACs and/or parameters.

    Args:
        results: results files (see the module docstring) or records as :func:`load_results` returns.
        x: ``"macs"``, ``"params"`` or ``"both"`` (two panels).
        paper: draw the paper's Table 1 (ImageNet, MACs as the paper counts them).
    """
    path = check_out(out)
    if x not in ("macs", "params", "both"):
        raise InputError(f"x must be 'macs', 'params' or 'both', got {x!r}")
    records = list(results)
    if records and not isinstance(records[0], Mapping):
        records = load_results(records)
    if records and not any(r.get("top1") is not None for r in records):
        raise InputError("no result has a top1 (merge the eval output, e.g. biasloss eval --json, with the profile)")
    keys = ("macs", "params") if x == "both" else (x,)
    for r in records:  # nothing given is dropped without a word
        if r.get("top1") is not None and all(r.get(key) is None for key in keys):
            raise InputError(f"{r['label']}: a top1 but no {' or '.join(keys)} to place it by: give its "
                             f"'biasloss profile {r.get('name') or r['label']} --json' output too")
        if paper and r.get("dataset") not in (None, "imagenet") and r.get("top1") is not None:
            raise InputError(f"{r['label']}: top-1 on {r['dataset']}, and the paper's points are ImageNet's: "
                             "draw it without them (--no-paper)")
    fig, axes = figure(1, len(keys), size=(7.5, 5.6))
    labels = {"macs": "MACs (millions)", "params": "parameters (millions)"}
    to_place = [_draw_tradeoff(ax, key, paper, records, labels[key]) for ax, key in zip(axes, keys)]
    if not any(to_place):
        raise InputError("nothing to plot: give results with top1 and macs/params, or keep the paper's points")
    handles, names = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    if handles:
        axes[-1].legend(handles, names, fontsize=8.5, loc="lower right", framealpha=0.9)
    if title is None:
        title = "Top-1 vs " + {"macs": "MACs", "params": "parameters", "both": "MACs and parameters"}[x]
        if paper:
            title += " — paper: ImageNet, Table 1 (Figures 1, 5)"
    fig.suptitle(title, fontsize=12)
    for ax, points in zip(axes, to_place):
        _place_labels(ax, points)
    return save(fig, path)


_METRIC_NAMES = {
    "val_top1": "validation top-1 (%)",
    "val_top5": "validation top-5 (%)",
    "train_top1": "training top-1 (%)",
    "val_loss": "validation loss",
    "val_ce": "validation cross-entropy",
    "train_loss": "training loss",
    "lr": "learning rate",
    "time_s": "epoch time (s)",
    "train_s": "training time (s)",
    "train_img_s": "training throughput (img/s)",
    "z_mean": "mean Bias Loss weight z",
    "z_p50": "Bias Loss weight z",
    "z_near_min": "fraction of weights at the batch's lowest",
}
#: Pseudo-metrics that draw training (dashed) and validation (solid) in one panel.
_PAIRS = {"loss": ("train_loss", "val_loss"), "top1": ("train_top1", "val_top1"),
          "weights": ("z_p10", "z_p50", "z_p90")}
#: How each key of a pseudo-metric is drawn, and its legend's words: the others solid.
_DASHED = {"train_loss": "training", "train_top1": "training", "z_p10": "10th / 90th percentile",
           "z_p90": "10th / 90th percentile"}


def _metrics_file(run: str | Path) -> Path:
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
        if not path.is_file():
            raise InputFileNotFoundError(f"no metrics.jsonl in run directory {run}", path)
    elif not path.exists():
        raise InputFileNotFoundError(f"no such run directory or metrics file: {run}", path)
    return path


def load_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The epochs of a run (``metrics.jsonl`` or its run directory), read as training reads them
    (:func:`biasloss.train.loop.read_metrics`): sorted by epoch, the last line of an epoch wins,
    lines that are not epoch records are skipped."""
    from biasloss.train.loop import read_metrics

    path = _metrics_file(run)
    try:
        records = read_metrics(path)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not records:
        raise InputError(f"{path}: no epoch records")
    return records


def _run_labels(paths: Sequence[Path]) -> list[str]:
    """Run directory names, with more of the path where two would read alike."""
    resolved = [p.resolve() for p in paths]
    parts = [(p.parent if p.name == "metrics.jsonl" else p.with_suffix("")).parts for p in resolved]
    for depth in range(1, max(len(ps) for ps in parts) + 1):
        labels = ["/".join(ps[-depth:]) for ps in parts]
        if len(set(labels)) == len(labels):
            break
    return labels


def plot_curves(
    out: str | Path,
    runs: Sequence[str | Path],
    *,
    metrics: Sequence[str] = ("val_top1",),
    title: str | None = None,
) -> Path:
    """Learning curves of several runs against the epoch, one panel per metric.

    Args:
        runs: run directories or ``metrics.jsonl`` files; the legend shows the run directory name.
        metrics: keys of ``metrics.jsonl`` (``val_top1``, ``val_loss``, ``train_loss``, ``lr``, ...),
            or ``loss`` / ``top1`` for training (dashed) and validation (solid) together.
    """
    path = check_out(out)
    if isinstance(runs, (str, Path)):
        runs = [runs]
    if not runs:
        raise InputError("give at least one run directory or metrics.jsonl")
    metrics = list(dict.fromkeys(metrics))
    if not metrics:
        raise InputError("give at least one metric")
    files = [_metrics_file(r) for r in runs]
    histories = [load_metrics(f) for f in files]
    labels = _run_labels(files)
    available = sorted({k for h in histories for rec in h for k, v in rec.items()
                        if isinstance(v, (int, float)) and k != "epoch"})
    for m in metrics:
        keys = _PAIRS.get(m, (m,))
        if not any(k in rec for h in histories for rec in h for k in keys):
            raise InputError(f"no run has {m!r}; available: {', '.join(available + sorted(_PAIRS))}")
    import matplotlib
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    cmap = matplotlib.colormaps["tab10"]
    ncols = min(len(metrics), 2)
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = figure(nrows, ncols, size=(6.4, 4.4))
    for ax, m in zip(axes, metrics):
        keys = _PAIRS.get(m, (m,))
        for i, (label, history) in enumerate(zip(labels, histories)):
            for key in keys:
                points = [(rec["epoch"], rec[key]) for rec in history
                          if isinstance(rec.get(key), (int, float)) and math.isfinite(rec[key])]
                if not points:
                    continue
                xs, ys = zip(*points)
                dashed = m in _PAIRS and key in _DASHED
                ax.plot(xs, ys, color=cmap(i % 10), linestyle="--" if dashed else "-", linewidth=1.8,
                        marker="o" if len(xs) <= 30 else None, markersize=3.5,
                        label=None if dashed else label)
        ylabel = "Bias Loss weight z" if m == "weights" else " / ".join(_METRIC_NAMES.get(k, k) for k in keys)
        style(ax, "epoch", ylabel)
        if m == "lr":
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, names = ax.get_legend_handles_labels()
        if m in _PAIRS:
            handles += [Line2D([], [], color="0.3", linestyle="--"), Line2D([], [], color="0.3", linestyle="-")]
            names += [_DASHED[keys[0]], "median" if m == "weights" else "validation"]
        ax.legend(handles, names, fontsize=9, framealpha=0.9)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(title or "Learning curves", fontsize=12)
    return save(fig, path)


def _no_kind(args: argparse.Namespace) -> int:
    raise InputError("choose what to plot: biasloss plot {weights,loss,tradeoff,curves,samples} --out FILE")


def _wrote(draw):
    """The ``func`` of a plot kind: ``draw(args)`` writes the figure(s); then say which."""

    def run(args: argparse.Namespace) -> int:
        print(f"wrote {draw(args)}")
        return 0

    return run


def _tradeoff_cmd(args: argparse.Namespace) -> Path:
    if not args.results and not args.paper:
        raise InputError("nothing to plot: --no-paper needs --results FILE")
    return plot_tradeoff(args.out, results=args.results or (), x=args.x, paper=args.paper, title=args.title)


def _samples_cmd(args: argparse.Namespace) -> str:
    from biasloss.analysis.samples import plot_samples, sample_weights

    positive_flags(vars(args), ("count", "limit"))
    check_out(args.out)
    if args.hist:
        check_out(args.hist, "--hist")
    result = sample_weights(args.checkpoint, count=args.count, limit=args.limit, data_dir=args.data_dir,
                            device=args.device)
    return " and ".join(map(str, plot_samples(result, args.out, args.hist)))


def register(subparsers) -> None:
    """Add ``biasloss plot`` to the CLI."""
    p = subparsers.add_parser(
        "plot",
        description="Draw the paper's figures to a PNG, SVG or PDF file (format from the --out suffix). "
                    "Needs matplotlib: pip install -e '.[plots]' in the biasloss checkout.",
    )
    p.set_defaults(func=_no_kind)
    kinds = p.add_subparsers(dest="plot_kind", metavar="KIND")

    def out_arg(q) -> None:
        q.add_argument("--out", required=True, metavar="FILE", help="output file: .png, .svg or .pdf")

    w = kinds.add_parser("weights", help="the weight function z(v) (Figure 2)",
                         description="z(v) = exp(alpha v) - beta against the scaled variance v, with the "
                                     "[0.5, 1.5] clamp. Without --alpha/--beta: two panels (beta varies, alpha "
                                     "varies); with them: the given pairs (a single value is repeated).")
    out_arg(w)
    w.add_argument("--alpha", type=float, nargs="+", metavar="A")
    w.add_argument("--beta", type=float, nargs="+", metavar="B")
    w.add_argument("--no-clamp", dest="clamp", action="store_const", const=None, default=DEFAULT_CLAMP,
                   help="draw the formula without the clamp")
    w.set_defaults(func=_wrote(lambda a: plot_weights(a.out, alphas=a.alpha, betas=a.beta, clamp=a.clamp)))

    lo = kinds.add_parser("loss", help="cross-entropy vs Bias Loss against the probability (Figure 3)",
                          description="Loss against the softmax probability for (a) correct and (b) incorrect "
                                      "predictions: cross-entropy and z(v) * CE at several scaled variances v.")
    out_arg(lo)
    lo.add_argument("--alpha", type=float, default=0.3)
    lo.add_argument("--beta", type=float, default=0.3)
    lo.add_argument("--variances", type=float, nargs="+", default=[0.0, 0.5, 1.0], metavar="V",
                    help="scaled variances to draw (default 0 0.5 1)")
    lo.add_argument("--no-clamp", dest="clamp", action="store_const", const=None, default=DEFAULT_CLAMP)
    lo.set_defaults(func=_wrote(lambda a: plot_loss(a.out, alpha=a.alpha, beta=a.beta, variances=a.variances,
                                                    clamp=a.clamp)))

    t = kinds.add_parser("tradeoff", help="top-1 against MACs and parameters (Figures 1, 5, 6)",
                         description="Top-1 against MACs and parameters: the paper's Table 1 plus your results. "
                                     "--results files: JSON objects or lines with name (or model/label), top1 (%), "
                                     "macs and/or params (counts or '236.6M'); records with the same name are "
                                     "merged, so 'biasloss profile --json' and 'biasloss eval --json' outputs "
                                     "can be given together.")
    out_arg(t)
    t.add_argument("--results", nargs="+", metavar="FILE", help="JSON / JSON-lines results files")
    t.add_argument("--x", choices=("macs", "params", "both"), default="both", help="x axis (default both panels)")
    t.add_argument("--no-paper", dest="paper", action="store_false", help="leave out the paper's Table 1")
    t.add_argument("--title")
    t.set_defaults(func=_wrote(_tradeoff_cmd))

    c = kinds.add_parser("curves", help="learning curves of several runs overlaid",
                         description="Metrics against the epoch from metrics.jsonl files or run directories; "
                                     "one panel per --metric (val_top1, val_top5, train_top1, val_ce (the "
                                     "validation cross-entropy: comparable between losses), val_loss and "
                                     "train_loss (each run's own loss: not comparable between losses), "
                                     "lr, time_s, the Bias Loss weights' z_mean, z_std, z_p01 ... "
                                     "z_p99, z_near_min, z_at_low, z_at_high, ..., or loss / top1 for training and "
                                     "validation together, weights for the weights' median with their 10th and "
                                     "90th percentiles).")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run directory or metrics.jsonl")
    out_arg(c)
    c.add_argument("--metric", nargs="+", metavar="M", help="default: val_top1")
    c.add_argument("--title")
    c.set_defaults(func=_wrote(lambda a: plot_curves(a.out, a.runs, metrics=a.metric or ("val_top1",),
                                                     title=a.title)))

    sm = kinds.add_parser("samples", help="the training images the Bias Loss weighs least and most",
                          description="Run a biasloss train checkpoint over its training split once (training "
                                      "batch size, first epoch's order, no augmentation) and draw the --count "
                                      "images with the lowest and the highest Bias Loss weight z(v) (batch "
                                      "scaling, the run's alpha, beta and clamp), each with its feature variance "
                                      "and weight; --hist also draws the histogram of all the weights.")
    sm.add_argument("--checkpoint", required=True, help="a last.pt or best.pt written by train")
    out_arg(sm)
    sm.add_argument("--hist", metavar="FILE", help="also the histogram of the weights: .png, .svg or .pdf")
    sm.add_argument("--count", type=int, default=8, help="images per row (default 8)")
    sm.add_argument("--limit", type=int, help="only the first N training images")
    sm.add_argument("--data-dir")
    from biasloss.train.train_cli import add_device_flag

    add_device_flag(sm)
    sm.set_defaults(func=_wrote(_samples_cmd))
