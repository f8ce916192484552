"""What the figures draw for a row of the report: statistics over seeds with their bands, and line styles.

- a band is a 95% Student-t interval over seeds (``ci95``, :func:`sharpdro.experiments.stats.t_interval`,
  as in the report's CI columns) or ± the sample std (``std``); none for a single run;
- :func:`severity_series`: a row's test accuracy per severity at the selected epochs;
- :func:`epoch_series`: any per-epoch value of the runs' records (train loss, q, diagnostics);
- :func:`row_styles`: a method keeps its colour; its tune-block variants in the same block get
  the same colour with their own line style and marker.

Nothing here imports matplotlib except :func:`draw`, which is handed the axes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from sharpdro.experiments.stats import mean_std, t_interval

BANDS = ("ci95", "std")
BAND_TEXT = {"ci95": "95% t-interval over seeds (mean ± t(0.975, n-1) · std / sqrt(n))",
             "std": "± sample std (ddof=1) over seeds"}


@dataclass
class Series:
    x: list
    mean: list
    lo: list  # None where there is no band (fewer than two values)
    hi: list
    n: list  # the number of values behind each point


def _check_band(band: str) -> None:
    if band not in BANDS:
        raise ValueError(f"band must be one of {', '.join(BANDS)}, got {band!r}")


def summarize_values(values: Sequence[float], band: str = "ci95") -> tuple:
    """(mean, lo, hi) of ``values`` under ``band`` (lo, hi None for fewer than two values)."""
    _check_band(band)
    if band == "ci95":
        iv = t_interval(values)
        return iv.mean, iv.lo, iv.hi
    m, s = mean_std(values)
    return m, (None if s is None else m - s), (None if s is None else m + s)


def _series(points: dict, band: str) -> Series:
    xs = sorted(points)
    out = Series([], [], [], [], [])
    for x in xs:
        m, lo, hi = summarize_values(points[x], band)
        out.x.append(x)
        out.mean.append(m)
        out.lo.append(lo)
        out.hi.append(hi)
        out.n.append(len(points[x]))
    return out


def severity_series(row, band: str = "ci95") -> Series:
    """A report row's test accuracy (%) per severity over its finished runs."""
    return _series({s: v for s in row.severities if (v := row.values(s))}, band)


# A weight logged as 0.0 underflowed (float32's smallest subnormal is 1.4e-45): on a log scale it counts as that.
LOG_TINY = 1e-45


def epoch_series(runs, getter: Callable, band: str = "std", log: bool = False) -> Series:
    """``getter(record)`` per epoch (from 1, as on screen) over ``runs``; a record that lacks it is skipped.

    ``log``: the statistics of log10 of the values, mapped back (the geometric mean, and a band that is a ratio
    around it): on a log axis the arithmetic interval of values a decade or more apart reaches below zero and
    would cover the whole axis, while the one of their logarithms says how far apart the seeds are."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for rec in run.records:
            try:
                v = getter(rec)
            except (KeyError, TypeError, IndexError, ValueError):
                v = None
            if v is not None:
                v = float(v)
                by_epoch.setdefault(int(rec["epoch"]) + 1, []).append(math.log10(max(v, LOG_TINY)) if log else v)
    s = _series(by_epoch, band)
    if log:
        for vals in (s.mean, s.lo, s.hi):
            vals[:] = [None if v is None else 10.0 ** v for v in vals]
    return s


def draw(ax, s: Series, color, alpha: float = 0.15, floor: float | None = None, **kw):
    """The mean line and, where defined, the band; ``floor`` clips the band from below (a log axis)."""
    ax.plot(s.x, s.mean, color=color, **kw)
    if any(lo is not None for lo in s.lo):
        nan = float("nan")
        lo = [nan if v is None else v for v in s.lo]
        if floor is not None:
            lo = [v if math.isnan(v) else max(v, floor) for v in lo]
        hi = [nan if v is None else v for v in s.hi]
        ax.fill_between(s.x, lo, hi, color=color, alpha=alpha, linewidth=0)


_VARIANT_STYLES = (("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"))


def row_styles(rows: Sequence, color_of: Callable) -> list[tuple]:
    """(colour, line style, marker) per row: ``color_of(row, i)`` for the colour; a method's row solid with
    circles, each of its variants (``row.variant``) its own dashes and marker, in row order."""
    seen: dict[str, int] = {}
    out = []
    for i, row in enumerate(rows):
        if getattr(row, "variant", None) is None:
            out.append((color_of(row, i), "-", "o"))
            continue
        k = seen.get(row.method_key, 0)
        seen[row.method_key] = k + 1
        style, marker = _VARIANT_STYLES[k % len(_VARIANT_STYLES)]
        out.append((color_of(row, i), style, marker))
    return out


def seeds_text(counts: Sequence[int]) -> str:
    """'over 3 seeds', or 'over n seeds (n per line in the legend)' when the rows differ."""
    counts = sorted(set(counts))
    if len(counts) == 1:
        return f"over {counts[0]} seed{'s' if counts[0] != 1 else ''}"
    return "over n seeds (n per line in the legend)"


def spread_text(what: str, counts: Sequence[int]) -> str:
    """``what`` ('mean and 95% interval') with :func:`seeds_text`, or, where a row has one seed, that there
    is no interval to draw: a single run's line is its value, not a mean with a band."""
    finished = sorted({c for c in counts if c > 0})
    if not finished:
        return "no finished seed"
    if finished == [1]:
        return "one seed: its values, no interval"
    return f"{what} {seeds_text(finished)}" + ("; no interval where n = 1" if 1 in finished else "")


# q of a group drawn on a log axis once the smallest mean is this far below the largest
LOG_RATIO = 20.0


def log_scale(values: Sequence[float], ratio: float = LOG_RATIO) -> bool:
    """Whether positive ``values`` span more than ``ratio`` (a rare group's weight near 1e-3 beside 0.5)."""
    pos = [v for v in values if v is not None and v > 0 and not math.isnan(v)]
    return bool(pos) and max(pos) / min(pos) > ratio


def log_floor(values: Sequence[float], mark: float) -> float:
    """The bottom of a log axis: a decade below the smallest positive value (or ``mark``), so both show."""
    pos = [v for v in values if v is not None and v > 0 and not math.isnan(v)] + [mark]
    return 10.0 ** math.floor(math.log10(min(pos) / 1.5))
