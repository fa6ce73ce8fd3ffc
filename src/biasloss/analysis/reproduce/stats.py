"""Statistics of a grid's runs, without scipy: mean and sample standard deviation over seeds, and the
paired difference (or ratio) of two losses seed by seed with its 95 % Student-t interval."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from biasloss.errors import InputError

__all__ = ["mean_std", "paired_difference", "paired_ratio", "t_quantile_975"]

# Student t quantiles t(0.975, df) for df = 1..30.
_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
         2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
         2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
         2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
         2.045229642, 2.042272456)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (two-sided 95 %).

    Exact table for ``df <= 30``; above, the Cornish-Fisher expansion in ``1/df`` (error below
    1e-6 there)."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise InputError(f"degrees of freedom must be an int >= 1, got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``n - 1``); ``(None, None)`` for no values and
    ``(mean, None)`` for one."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def paired_difference(treatment: Mapping[int, float], baseline: Mapping[int, float]) -> dict[str, Any]:
    """``treatment - baseline`` seed by seed over the seeds both have: ``n``, ``seeds``,
    ``diffs``, ``mean``, ``std`` (n - 1), ``ci95`` (``[low, high]``, the t interval; ``None``
    for n < 2)."""
    seeds = sorted(set(treatment) & set(baseline))
    diffs = [treatment[s] - baseline[s] for s in seeds]
    mean, std = mean_std(diffs)
    ci = None
    if std is not None:
        half = t_quantile_975(len(diffs) - 1) * std / math.sqrt(len(diffs))
        ci = [mean - half, mean + half]
    return {"n": len(diffs), "seeds": seeds, "diffs": diffs, "mean": mean, "std": std, "ci95": ci}


def paired_ratio(treatment: Mapping[int, float], baseline: Mapping[int, float]) -> dict[str, Any] | None:
    """``treatment / baseline`` seed by seed as a geometric mean with its 95 % interval: the paired
    difference of logarithms, exponentiated. Variances of one layer span orders of magnitude from
    seed to seed, so a ratio describes them better than a difference. ``None`` if a value is <= 0."""
    seeds = set(treatment) & set(baseline)
    if any(treatment[s] <= 0 or baseline[s] <= 0 for s in seeds):
        return None
    logs = paired_difference({s: math.log(treatment[s]) for s in seeds}, {s: math.log(baseline[s]) for s in seeds})
    if logs["mean"] is None:
        return None
    return {"n": logs["n"], "geomean": math.exp(logs["mean"]),
            "ci95": None if logs["ci95"] is None else [math.exp(v) for v in logs["ci95"]]}
