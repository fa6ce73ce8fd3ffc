"""The report of a ``biasloss reproduce`` grid: aggregation of its runs and the markdown of ``results.md``.

A run's accuracy is ``val_top1`` (top-1 % on the test split, the trainer's evaluation weights, EMA
where the recipe has one) of the **last** epoch in its ``metrics.jsonl``, not the best epoch (picking
the best epoch on the test split flatters every cell; the best is recorded too). Per (model, loss):
mean and sample standard deviation (``n - 1``) over seeds, and ``n``; per model: the paired
difference ``bias - ce`` (and ``focal - ce``) seed by seed, its mean and a 95 % Student-t interval
``mean +- t(0.975, n - 1) * sd / sqrt(n)`` (``n >= 2``; only seeds where both runs finished), since
pairing by seed removes the seed-to-seed spread the two losses share (same initialisation and data
order). The paper's numbers (:data:`biasloss.paper.PAPER_TOP1`; single runs of 200 or ~350 epochs,
without intervals) stand beside ours where the dataset is the paper's and the model maps to a row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from biasloss.analysis.reproduce.runs import GRID_LOSSES, LOSS_OPTIONS, VARIANCE_LOSSES, GridRun, GridSettings
from biasloss.analysis.reproduce.stats import mean_std, paired_difference
from biasloss.paper import PAPER_TOP1, bias_gain_range

__all__ = ["LOSS_NAMES", "METRIC", "WEIGHT_STATS", "aggregate", "format_ablation", "format_markdown",
           "format_variance"]

LOSS_NAMES = {loss: "CE" if loss == "ce" else loss for loss in GRID_LOSSES}
METRIC = ("val_top1 (top-1 % on the test split, the trainer's evaluation weights) of the last epoch in each "
          "run's metrics.jsonl")
#: The weight statistics an ablation reports, per run the mean over its epochs (z_mean ... of metrics.jsonl).
WEIGHT_STATS = ("z_mean", "z_std", "z_p01", "z_p10", "z_p50", "z_p90", "z_p99", "z_near_min", "z_at_low", "z_at_high")


def _diff_losses(losses: Sequence[str]) -> list[str]:
    """The losses compared with cross-entropy (none without it)."""
    return [loss for loss in losses if loss != "ce" and "ce" in losses]


def aggregate(runs: Sequence[GridRun], settings: GridSettings) -> dict[str, Any]:
    """Cells (mean, std, n per model and loss) and paired differences against ``ce``."""
    cells, differences = [], []
    for model in settings.models:
        paper = PAPER_TOP1.get(settings.dataset, {}).get(model)
        by_loss: dict[str, dict[int, float]] = {}
        for loss in settings.losses:
            done = [r for r in runs if r.model == model and r.loss == loss and r.final_top1 is not None]
            by_loss[loss] = {r.seed: r.final_top1 for r in done}
            mean, std = mean_std(list(by_loss[loss].values()))
            cells.append({"model": model, "loss": loss, "n": len(done), "seeds": sorted(by_loss[loss]),
                          "mean": mean, "std": std,
                          "best_mean": mean_std([r.best_top1 for r in done if r.best_top1 is not None])[0],
                          "paper": paper.top1.get(loss) if paper else None})
        for loss in _diff_losses(settings.losses):
            diff = paired_difference(by_loss[loss], by_loss["ce"])
            both = paper and loss in paper.top1 and "ce" in paper.top1
            paper_diff = round(paper.top1[loss] - paper.top1["ce"], 4) if both else None
            differences.append({"model": model, "loss": loss, "baseline": "ce", **diff, "paper": paper_diff})
    return {"cells": cells, "differences": differences}


def _fmt(x: float | None, signed: bool = False, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, ("+" if signed else "") + spec)


def _fmt_cell(cell: Mapping[str, Any], spec: str = ".2f") -> str:
    if not cell["n"]:
        return "–"
    spread = "" if cell["std"] is None else f" ± {_fmt(cell['std'], spec=spec)}"  # no std for n = 1
    return f"{_fmt(cell['mean'], spec=spec)}{spread} (n={cell['n']})"


def _fmt_diff(diff: Mapping[str, Any] | None, spec: str = ".2f", *, short: bool = False) -> str:
    """A paired difference: mean [95 % interval] (n=...); ``short`` (a narrow cell): without n, bold
    when the interval excludes 0."""
    if not diff or not diff["n"]:
        return "–"
    text = _fmt(diff["mean"], True, spec)
    if diff["ci95"] is not None:
        low, high = diff["ci95"]
        text += f" [{_fmt(low, True, spec)}, {_fmt(high, True, spec)}]"
    if short:
        return f"**{text}**" if diff["ci95"] is not None and (low > 0 or high < 0) else text
    return f"{text} (n={diff['n']})"


def _training_line(s: Mapping[str, Any]) -> str:
    """"Dataset ..., recipe ..., N epochs[, batch B][, first L images]" of a grid's settings."""
    return (f"Dataset {s['dataset']}, recipe {s['recipe']}, {s['epochs']} epochs"
            + (f", batch {s['batch_size']}" if s.get("batch_size") else "")
            + (f", first {s['limit']} images (--limit)" if s.get("limit") else ""))


def format_markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: one row per model, our cells, the paired differences and the paper's numbers."""
    s = results["settings"]
    losses, models = s["losses"], s["models"]
    cells = {(c["model"], c["loss"]): c for c in results["cells"]}
    diffs = {(d["model"], d["loss"]): d for d in results["differences"]}
    diff_losses = _diff_losses(losses)
    rows = {m: PAPER_TOP1.get(s["dataset"], {}).get(m) for m in models}
    with_paper = any(rows.values())
    title = {"table4": "Table 4 (CIFAR-100, loss comparison)", "table3": "Table 3 (ImageNet ablation)",
             "grid": "loss comparison grid"}[s["command"]]
    finished = sum(r["status"] == "finished" for r in results["runs"])
    lines = [
        f"# biasloss reproduce: {title}",
        "",
        _training_line(s)
        + "".join(f", {k.replace('_', ' ')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in ((k, s.get(k)) for k in LOSS_OPTIONS) if v is not None)
        + f"; seeds {', '.join(map(str, s['seeds']))}; {finished} of {len(results['runs'])} runs finished.",
        "",
        f"Ours: top-1 % = {METRIC}; mean ± sample standard deviation (n - 1) over seeds. "
        "Differences: paired by seed (the same seed gives both losses the same initialisation and data "
        "order), mean [95 % Student-t interval] over the seeds where both runs finished.",
        "",
    ]
    header = ["model"] + [LOSS_NAMES[loss] for loss in losses] + \
        [f"{LOSS_NAMES[loss]} − CE [95 % CI]" for loss in diff_losses]
    if with_paper:
        header += ["paper model"] + [f"paper {LOSS_NAMES[loss]}" for loss in losses] + \
            [f"paper {LOSS_NAMES[loss]} − CE" for loss in diff_losses]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in models:
        row = [f"`{m}`"] + [_fmt_cell(cells[(m, loss)]) for loss in losses] + \
            [_fmt_diff(diffs[(m, loss)]) for loss in diff_losses]
        if with_paper:
            paper = rows[m]
            row += [paper.label if paper else "–"]
            row += [_fmt(paper.top1.get(loss), spec="g") if paper else "–" for loss in losses]
            row += [_fmt(diffs[(m, loss)]["paper"], True, "g") if paper else "–" for loss in diff_losses]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if with_paper:
        sources = sorted({r.source for r in rows.values() if r})
        lines.append("Paper: " + "; ".join(sources) + ". The paper reports single runs with the full "
                     "recipe (no seeds, no intervals); shorter or subsampled runs here are not expected to "
                     "reach its numbers, only to show the same sign of the difference.")
    else:
        (t4_low, t4_high), (t3_low, t3_high) = bias_gain_range("Table 4"), bias_gain_range("Table 3")
        lines.append(f"The paper reports no {s['dataset']} numbers. For reference its Bias Loss gains over "
                     f"cross-entropy are +{t4_low:.1f} to +{t4_high:.1f} points on CIFAR-100 (Table 4) and "
                     f"+{t3_low:.1f} to +{t3_high:.1f} on ImageNet (Table 3).")
    if results.get("variance"):
        lines += ["", *format_variance(results["variance"])]
    missing = [r["dir"] for r in results["runs"] if r["status"] != "finished"]
    if missing:
        lines += ["", f"Not finished ({len(missing)}; run the same command again to continue): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def format_variance(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: Table 5's question, one row per model, layer and statistic."""
    lines = ["## Per-sample feature variance (Table 5's question)", "",
             "Per-sample unbiased variance of a layer's output map over the test split, for each CE and Bias "
             "Loss run's final model (`biasloss variance`); avg / max / min over the images, then mean ± "
             "std over seeds; bias − CE paired by seed, and bias / CE paired by seed as a geometric mean (the "
             "paired difference of logarithms: variances of one layer span orders of magnitude from seed to "
             "seed), each with its 95 % t interval.", "",
             "| model | layer | stat | CE | bias | bias − CE [95 % CI] | bias / CE [95 % CI] |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:  # variances span orders of magnitude: three significant digits
        text = {loss: _fmt_cell(row["cells"][loss], ".3g") for loss in VARIANCE_LOSSES}
        d = _fmt_diff(row["difference"], ".3g")
        r = row.get("ratio")
        ratio = "–" if r is None else f"{r['geomean']:.2f}" + (
            "" if r["ci95"] is None else f" [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]")
        lines.append(f"| `{row['model']}` | {row['layer']} (`{row['module']}`) | {row['stat']} | {text['ce']} | "
                     f"{text['bias']} | {d} | {ratio} |")
    return lines


def format_ablation(results: Mapping[str, Any]) -> str:
    """``results.md`` of ``reproduce ablation``."""
    s = results["settings"]
    lines = [
        f"# biasloss reproduce: ablations of `{', '.join(s['models'])}`",
        "",
        _training_line(s)
        + f"; seeds {', '.join(map(str, s['seeds']))}. Each variant changes the paper's defaults (alpha = beta "
        "= 0.3, batch min-max scaling, weights clamped to [0.5, 1.5], no label smoothing) in the options "
        f"shown; the default Bias Loss and cross-entropy runs are those of `{results['baseline']}`.",
        "",
        f"Top-1 % = {METRIC}; mean ± sample standard deviation over seeds. Differences paired by seed, "
        "mean [95 % Student-t interval].",
        "",
        "| variant | options | top-1 | − default bias [95 % CI] | − CE [95 % CI] | last two epochs "
        "| train time a run |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        options = ", ".join(f"{k.replace('_', ' ')} {_option_text(v)}" for k, v in row["options"].items()) or "–"
        cell, vs_default, vs_ce = _fmt_cell(row), _fmt_diff(row["vs_default"]), _fmt_diff(row["vs_ce"])
        seconds = "–" if row["train_time_s"] is None else f"{row['train_time_s']:.0f} s"
        two = row.get("last_two")
        levelled = "–" if not two else f"{two['before']:.2f} → {two['last']:.2f} ({two['change']:+.2f})"
        lines.append(f"| {row['name']} | {options} | {cell} | {vs_default} | {vs_ce} | {levelled} | {seconds} |")
    weighted = [row for row in results["rows"] if row.get("weights")]
    if weighted:
        stats = [k for k in WEIGHT_STATS if any(k in row["weights"] for row in weighted)]
        lines += ["", "## The weights z the Bias Loss runs trained with", "",
                  "From every training batch as the loss saw it (`metrics.jsonl`), per run the mean over its "
                  "epochs, then the mean over seeds. near_min: the fraction within 0.01 of its batch's lowest "
                  "weight; at_low / at_high: at the clamp's bounds.", "",
                  "| variant | " + " | ".join(k.removeprefix("z_") for k in stats) + " |",
                  "|---|" + "---|" * len(stats)]
        for row in weighted:
            lines.append(f"| {row['name']} | " + " | ".join(
                f"{row['weights'][k]:.3f}" if k in row["weights"] else "–" for k in stats) + " |")
    with_classes = [row for row in results["rows"] if row.get("class_top1")]
    if with_classes:
        classes = sorted(with_classes[0]["class_top1"], key=int)
        lines += ["", "## Per-class top-1 of the last epoch", "",
                  "Mean over seeds; below each variant's row, its paired difference from cross-entropy "
                  "(bold: the 95 % interval excludes 0; ten classes, so about one in two rows of ten may show "
                  "a bold cell by chance at the 5 % level).", "",
                  "| variant | " + " | ".join(f"class {k}" for k in classes) + " |",
                  "|---|" + "---|" * len(classes)]
        for row in with_classes:
            lines.append(f"| {row['name']} | " + " | ".join(_fmt(row["class_top1"].get(k)) for k in classes) + " |")
            if row.get("class_vs_ce"):
                diffs = (_fmt_diff(row["class_vs_ce"].get(k), ".1f", short=True) for k in classes)
                lines.append("| − CE [95 % CI] | " + " | ".join(diffs) + " |")
    if results.get("variance"):
        lines += ["", *format_variance(results["variance"])]
    return "\n".join(lines) + "\n"


def _option_text(value: Any) -> str:
    if isinstance(value, dict):
        return "c per seed: " + ", ".join(f"s{seed} {c}" for seed, c in value.items())
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)
