"""``biasloss reproduce``: the paper's loss comparisons (Tables 3 and 4) as grids of training runs.

Paper: "Bias Loss for Mobile Neural Networks", Abrahamyan et al., ICCV 2021: Table 4 (CIFAR-100, five
compact models x cross-entropy, focal loss and Bias Loss) and Table 3 (ImageNet ablation:
MobileNetV3-Large and SkipblockNet-M, cross-entropy against Bias Loss). A grid is models x losses x
seeds, each run trained by ``biasloss train``'s trainer into an ordinary run directory, resumable, its
results reported with intervals over seeds beside the paper's numbers. The modules, one job each:
:mod:`~.stats` (mean, standard deviation, paired differences and their t intervals),
:mod:`~.runs` (the grid's runs, their status and records), :mod:`~.report` (aggregation and
``results.md``), :mod:`~.grid` (training a grid, the ablations, the feature variance) and
:mod:`~.cli` (the command); this package gathers their public names.
"""

from __future__ import annotations

from biasloss.analysis.reproduce.cli import register, settings_from_args
from biasloss.analysis.reproduce.grid import (
    mean_weight,
    measure_variance,
    run_ablation,
    run_grid,
)
from biasloss.analysis.reproduce.report import aggregate, format_markdown
from biasloss.analysis.reproduce.runs import (
    ABLATIONS,
    GRIDS,
    GridRun,
    GridSettings,
    GridSpec,
    plan_grid,
    read_record,
    read_run,
)
from biasloss.analysis.reproduce.stats import (
    mean_std,
    paired_difference,
    t_quantile_975,
)
from biasloss.paper import PAPER_TOP1 as PAPER

__all__ = [
    "ABLATIONS",
    "GRIDS",
    "PAPER",
    "GridRun",
    "GridSettings",
    "GridSpec",
    "aggregate",
    "format_markdown",
    "mean_std",
    "mean_weight",
    "measure_variance",
    "paired_difference",
    "plan_grid",
    "read_record",
    "read_run",
    "register",
    "run_ablation",
    "run_grid",
    "settings_from_args",
    "t_quantile_975",
]
