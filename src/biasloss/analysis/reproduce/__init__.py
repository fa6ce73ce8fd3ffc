"""``biasloss reproduce``: the loss comparisons of "Bias Loss for Mobile Neural Networks" (Abrahamyan et al.,
ICCV 2021; Tables 3 and 4) as grids of training runs, one job per module (:mod:`~.stats`, :mod:`~.runs`,
:mod:`~.report`, :mod:`~.grid`, :mod:`~.cli`); this package gathers the names the command line and the tests use.
"""

from __future__ import annotations

from biasloss.analysis.reproduce.cli import register
from biasloss.analysis.reproduce.grid import mean_weight
from biasloss.analysis.reproduce.report import aggregate, format_markdown
from biasloss.analysis.reproduce.runs import ABLATIONS, GRIDS, GridRun, GridSettings, read_record, read_run
from biasloss.analysis.reproduce.stats import mean_std, paired_difference, t_quantile_975

__all__ = ["ABLATIONS", "GRIDS", "GridRun", "GridSettings", "aggregate", "format_markdown", "mean_std", "mean_weight",
           "paired_difference", "read_record", "read_run", "register", "t_quantile_975"]
