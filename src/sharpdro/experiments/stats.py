"""Statistics over seeds: mean, sample std, Student-t confidence intervals, paired differences.

Kept free of the report's types so that each formula is checked on plain numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

LEVEL = 0.95


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None for fewer than two values)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    # imported here: scipy.stats takes longer to import (seconds on a busy machine) than the whole report
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Interval:
    """A t-interval over ``n`` values: mean ± t_{(1+level)/2, n-1} · std / sqrt(n); lo/hi None for n < 2."""
    n: int
    mean: float | None
    std: float | None
    lo: float | None
    hi: float | None

    @property
    def excludes_zero(self) -> bool | None:
        if self.lo is None:
            return None
        return self.lo > 0 or self.hi < 0


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    m, s = mean_std(values)
    n = len(values)
    if s is None:
        return Interval(n, m, None, None, None)
    half = t_quantile(n - 1, level) * s / math.sqrt(n)
    return Interval(n, m, s, m - half, m + half)


def paired_differences(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[list[int], list[float]]:
    """The seeds present in both ``a`` and ``b`` (seed -> value), sorted, and a[seed] - b[seed] for each."""
    seeds = sorted(set(a) & set(b))
    return seeds, [a[s] - b[s] for s in seeds]
