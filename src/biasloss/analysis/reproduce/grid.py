"""Running a ``biasloss reproduce`` grid: training its runs one after another in this process (through
``biasloss train``'s :func:`~biasloss.train.runner.run_train`), Table 5's feature variance of its runs, and
the Bias Loss ablations, each its own grid against the paper's default Bias Loss and cross-entropy runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from biasloss._io import atomic_write_text
from biasloss.analysis.reproduce.report import METRIC, WEIGHT_STATS, aggregate, format_ablation, format_markdown
from biasloss.analysis.reproduce.runs import (ABLATIONS, BEYOND_PAPER, VARIANCE_LOSSES, GridRun, GridSettings,
                                              inspect_run, plan_grid, read_record, record_path)
from biasloss.analysis.reproduce.stats import mean_std, paired_difference, paired_ratio
from biasloss.errors import InputError
from biasloss.train import runner
from biasloss.train.checkpoint import CheckpointError

__all__ = ["mean_weight", "measure_variance", "run_ablation", "run_grid", "variance_table"]


def measure_variance(runs: Sequence[GridRun], settings: GridSettings, out: Path) -> None:
    """Table 5's measurement (:func:`biasloss.analysis.variance.checkpoint_variance`: 5th, 20th and
    last conv layer, test split) of every finished CE and Bias Loss run's ``last.pt``, added to
    the run's record once. A run whose record has it already is skipped, and so is one without a
    run directory (its checkpoint is gone: said so, the table has one seed fewer)."""
    from biasloss.analysis.variance import checkpoint_variance

    for run in runs:
        if run.status != "finished" or run.loss not in VARIANCE_LOSSES:
            continue
        path = record_path(run, out)
        record = read_record(path)
        if record is None or "variance" in record:
            continue
        last = run.dir / "last.pt"
        if not last.is_file():
            print(f"{run.name}: no {last} to measure the feature variance of; left out", flush=True)
            continue
        result = checkpoint_variance(last, device=settings.device, data_dir=settings.data_dir)
        record["variance"] = {"samples": result.samples, "num_convs": result.num_convs,
                              "layers": [{"label": s.label, "name": s.name, **s.as_dict()} for s in result.layers]}
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")
        print(f"{run.name}: feature variance measured on {result.samples} test images", flush=True)


def variance_table(runs: Sequence[GridRun], settings: GridSettings, out: Path) -> list[dict[str, Any]]:
    """Rows per (model, layer, stat): CE and Bias Loss mean ± std over seeds and the paired
    difference bias - CE, from the records :func:`measure_variance` wrote; ``[]`` if none has it."""
    rows: list[dict[str, Any]] = []
    for model in settings.models:
        by_loss: dict[str, dict[int, list[dict[str, Any]]]] = {loss: {} for loss in VARIANCE_LOSSES}
        for run in runs:
            if run.model != model or run.loss not in VARIANCE_LOSSES or run.status != "finished":
                continue
            record = read_record(record_path(run, out))
            if record and "variance" in record:
                by_loss[run.loss][run.seed] = record["variance"]["layers"]
        if not any(by_loss.values()):
            continue
        first = next(layers for values in by_loss.values() for layers in values.values())
        for k, layer in enumerate(first):
            for stat in ("avg", "max", "min"):
                values = {loss: {seed: layers[k][stat] for seed, layers in seeds.items()}
                          for loss, seeds in by_loss.items()}
                cells = {loss: dict(zip(("mean", "std"), mean_std(list(v.values()))), n=len(v))
                         for loss, v in values.items()}
                rows.append({"model": model, "layer": layer["label"], "module": layer["name"], "stat": stat,
                             "cells": cells, "difference": paired_difference(values["bias"], values["ce"]),
                             "ratio": paired_ratio(values["bias"], values["ce"])})
    return rows


def _write(results: dict[str, Any], variance: list[dict[str, Any]], out: Path,
           markdown: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """``<out>/results.json`` and ``results.md`` of ``results``, with the ``variance`` table if there is one."""
    if variance:
        results["variance"] = variance
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", markdown(results))
    return results


def _write_results(runs: Sequence[GridRun], settings: GridSettings, out: Path) -> dict[str, Any]:
    results = {"settings": settings.recorded("device", "workers", "progress", "variance"), "metric": METRIC,
               "runs": [r.record(out) for r in runs], **aggregate(runs, settings)}
    return _write(results, variance_table(runs, settings, out), out, format_markdown)


def run_grid(settings: GridSettings, out: Path, *, dry_run: bool = False) -> dict[str, Any] | None:
    """Train every unfinished run, rewriting ``results.md``/``results.json`` after each (and with ``variance``,
    :func:`measure_variance`); returns the results (``None`` for a dry run, which only prints the plan)."""
    runs = plan_grid(settings, out)
    todo = [r for r in runs if r.status != "finished"]
    print(f"biasloss reproduce {settings.command}: {len(runs)} runs ({len(settings.models)} models x "
          f"{len(settings.losses)} losses x {len(settings.seeds)} seeds) on {settings.dataset}, "
          f"{settings.epochs} epochs each; {len(runs) - len(todo)} finished, {len(todo)} to train; out {out}",
          flush=True)
    if dry_run:
        for i, run in enumerate(runs, 1):
            what = {"new": "to train", "resume": f"to resume at epoch {run.epochs_done}"}.get(run.status)
            print(f"[{i}/{len(runs)}] {run.name}: {what or f'finished, top-1 {run.final_top1:.2f}'}")
        return None
    for i, run in enumerate(runs, 1):
        if run.status == "finished":
            print(f"[{i}/{len(runs)}] {run.name}: finished (top-1 {run.final_top1:.2f}), skipped", flush=True)
            continue
        how = "resuming at epoch " + str(run.epochs_done) if run.status == "resume" else "training"
        print(f"[{i}/{len(runs)}] {run.name}: {how}", flush=True)
        try:
            runner.run_train(settings.train_config(run))
        except CheckpointError as e:
            raise CheckpointError(f"{run.name}: {str(e).splitlines()[0]}") from None
        inspect_run(run, settings, out)
        if run.status != "finished":
            raise RuntimeError(f"{run.name}: the trainer returned before epoch {settings.epochs}")
        _write_results(runs, settings, out)
    if settings.variance:
        measure_variance(runs, settings, out)
    return _write_results(runs, settings, out)


def run_ablation(settings: GridSettings, out: Path, *, baseline: Path | None = None,
                 dry_run: bool = False, variants: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Ablations (:data:`ABLATIONS`, by default those not in :data:`BEYOND_PAPER`) of one model: each a
    grid in ``<out>/<name>/`` (Bias Loss runs, or the variant's ``loss``), against the paper's
    default Bias Loss and cross-entropy of the same seeds. Those come from ``baseline`` (a
    finished ``reproduce grid`` of the same model, dataset and epochs; never trained into) or else
    are trained in ``<out>/default/`` (with ``settings.variance``, Table 5's measurement of them).
    ``loss_scale "paired"`` (the CE x c arm) gives each seed c = :func:`mean_weight` of the
    default Bias Loss run of that seed. Writes ``<out>/results.md`` and ``results.json``: per
    variant the mean ± std top-1, its paired differences against the default Bias Loss and
    against cross-entropy, per-class top-1 and the Bias Loss weights the runs trained with."""
    settings = replace(settings, command="grid")  # each part is an ordinary grid
    base = replace(settings, losses=["ce", "bias"], variance=settings.variance and baseline is None)
    where = baseline if baseline is not None else out / "default"
    if baseline is None:
        run_grid(base, where, dry_run=dry_run)
    base_runs = None if dry_run and baseline is None else plan_grid(base, where)
    missing = [r.name for r in base_runs or [] if r.status != "finished"]
    if missing:  # only a --baseline can lack some: run_grid finished those it trained
        raise InputError(f"--baseline {str(baseline)!r} lacks finished runs {', '.join(missing)}: finish them "
                         "with 'biasloss reproduce grid ... --losses ce bias', or leave out --baseline to "
                         "train them here")
    trained: dict[str, list[GridRun]] = {}
    for name in variants or [n for n in ABLATIONS if n not in BEYOND_PAPER]:
        options = dict(ABLATIONS[name])
        loss = options.pop("loss", "bias")
        if options.get("loss_scale") == "paired":
            if base_runs is None:  # a dry run before the default runs exist
                print(f"{name}: c from each seed's default Bias Loss run, once trained", flush=True)
                continue
            options["loss_scale"] = {r.seed: mean_weight(record_path(r, where))
                                     for r in base_runs if r.loss == "bias"}
        variant = replace(settings, losses=[loss], variance=False, **options)
        run_grid(variant, out / name, dry_run=dry_run)
        if not dry_run:
            trained[name] = plan_grid(variant, out / name)
    if dry_run:
        return None
    variance = variance_table(base_runs, base, where)
    return _write(_ablation_results(settings, base_runs, trained, out, where), variance, out, format_ablation)


def mean_weight(record_path: Path) -> float:
    """c of the CE x c arm: the mean Bias Loss weight of a run over its whole training, the mean
    of its epochs' ``z_mean`` (every epoch weighs the same number of images), rounded to 4
    decimals (the value the CE x c run's identity and command carry)."""
    record = read_record(record_path)
    means = [line["z_mean"] for line in (record or {}).get("metrics", []) if "z_mean" in line]
    if not means:
        raise InputError(f"{record_path}: no Bias Loss weights logged (z_mean); c of the CE x c arm needs a Bias "
                         "Loss run trained by a biasloss that logs them")
    return round(math.fsum(means) / len(means), 4)


def _ablation_results(settings: GridSettings, base_runs: Sequence[GridRun], variants: Mapping[str, Sequence[GridRun]],
                      out: Path, where: Path) -> dict[str, Any]:
    def top1(runs: Sequence[GridRun], loss: str = "bias") -> dict[int, float]:
        return {r.seed: r.final_top1 for r in runs if r.loss == loss and r.final_top1 is not None}

    def records(runs: Sequence[GridRun], where: Path, loss: str) -> dict[int, dict[str, Any]]:
        return {r.seed: record for r in runs if r.loss == loss and (record := read_record(record_path(r, where)))}

    ce, default = top1(base_runs, "ce"), top1(base_runs)
    ce_classes = _class_top1(records(base_runs, where, "ce"))
    rows = []
    arms = [("ce (cross-entropy)", "ce", {}, base_runs, where), ("default Bias Loss", "bias", {}, base_runs, where),
            *((n, ABLATIONS[n].get("loss", "bias"), ABLATIONS[n], v, out / n) for n, v in variants.items())]
    for i, (name, loss, options, runs, root) in enumerate(arms):  # i = 0: cross-entropy, 1: the default Bias Loss
        values = top1(runs, loss)
        mean, std = mean_std(list(values.values()))
        found = records(runs, root, loss)
        times = [r.get("train_time_s") for r in found.values() if r.get("train_time_s") is not None]
        classes = _class_top1(found)
        options = {k: v for k, v in options.items() if k != "loss"}
        if options.get("loss_scale") == "paired":
            options["loss_scale"] = {seed: r["identity"].get("loss_scale") for seed, r in sorted(found.items())}
        rows.append({"name": name, "loss": loss, "options": options, "n": len(values), "seeds": sorted(values),
                     "mean": mean, "std": std, "train_time_s": mean_std(times)[0],
                     "vs_default": None if i < 2 else paired_difference(values, default),
                     "vs_ce": None if i == 0 else paired_difference(values, ce),
                     "last_two": _last_two(found),
                     "weights": _weight_summary(found),
                     "class_top1": {str(k): mean_std(list(v.values()))[0] for k, v in classes.items()},
                     "class_vs_ce": None if i == 0 else
                     {str(k): paired_difference(v, ce_classes.get(k, {})) for k, v in classes.items()}})
    return {"settings": settings.recorded("device", "workers", "progress", "variance", "losses"),
            "metric": METRIC, "baseline": str(where), "rows": rows}


def _class_top1(records: Mapping[int, Mapping[str, Any]]) -> dict[int, dict[int, float]]:
    """class -> seed -> the last epoch's top-1 % of that class (``val_class_top1``), where logged."""
    classes: dict[int, dict[int, float]] = {}
    for seed, record in records.items():
        last = record["metrics"][-1] if record.get("metrics") else {}
        for k, value in enumerate(last.get("val_class_top1") or []):
            classes.setdefault(k, {})[seed] = value
    return classes


def _last_two(records: Mapping[int, Mapping[str, Any]]) -> dict[str, Any] | None:
    """Mean top-1 of the last two epochs over seeds, and their difference (did it level off?)."""
    pairs = [[line["val_top1"] for line in r["metrics"][-2:]] for r in records.values() if len(r["metrics"]) >= 2]
    if not pairs:
        return None
    before, last = (mean_std([p[i] for p in pairs])[0] for i in (0, 1))
    return {"before": before, "last": last, "change": last - before,
            "per_seed": [round(p[1] - p[0], 4) for p in pairs]}


def _weight_summary(records: Mapping[int, Mapping[str, Any]]) -> dict[str, Any] | None:
    """Per weight statistic (:data:`~biasloss.analysis.reproduce.report.WEIGHT_STATS`): the mean over
    seeds of each run's mean over its epochs; ``None`` for runs that logged none (cross-entropy)."""
    per_run = []
    for record in records.values():
        lines = [line for line in record["metrics"] if "z_mean" in line]
        if lines:
            per_run.append({k: math.fsum(line[k] for line in lines) / len(lines) for k in WEIGHT_STATS
                            if all(k in line for line in lines)})
    if not per_run:
        return None
    return {k: mean_std([r[k] for r in per_run if k in r])[0] for k in WEIGHT_STATS if any(k in r for r in per_run)}
