"""Paired comparisons of a report's rows with the reference methods, seed by seed.

Two rows of one block (same dataset, corruption and, unless the rows were selected per method
by ``--select-hparams``, the same values of the swept keys that are no method setting, such as ``train.lr``:
each method at its own hyperparameters and sampler) are compared on the seeds both
finished: per seed, the method's accuracy minus the reference's, in percentage points, and a
t-interval over those differences (the std is that of the per-seed differences, which removes
the seed-to-seed variation the two runs share).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from sharpdro.experiments.stats import paired_differences, t_interval
from sharpdro.methods import PAIRED_REFERENCES as REFERENCES  # method keys, in the order the comparisons are listed

METRICS = ("average", "worst")


@dataclass
class Paired:
    row: Any  # a report Row
    reference: Any  # the reference method's Row of the same block
    seeds: list  # the seeds both rows finished
    intervals: dict  # metric -> stats.Interval of the per-seed differences (percentage points)


def by_seed(row, metric: str) -> dict[int, float]:
    """A row's finished runs' ``metric`` in percent, by seed; a seed with several finished runs
    in the row is left out, as it has no single partner."""
    finished = [r for r in row.finished if getattr(r, metric) is not None]
    counts = Counter(r.seed for r in finished)
    return {r.seed: 100.0 * getattr(r, metric) for r in finished if counts[r.seed] == 1}


def _block(row, by_hparams: bool) -> tuple:
    key = (row.dataset, row.data, row.corruption)
    return key + (json.dumps(getattr(row, "shared", row.hparams), sort_keys=True, default=str),) if by_hparams else key


def _references(method: str) -> tuple:
    """The references a method is compared with: all of them, but a reference only with those listed
    before it (JTT - ERM is listed, so ERM - JTT, its negation, is not)."""
    if method in REFERENCES:
        return REFERENCES[:REFERENCES.index(method)]
    return REFERENCES


def compare(row, reference) -> Paired | None:
    """The paired differences of two rows (None when they share no finished seed)."""
    seeds, intervals = [], {}
    for metric in METRICS:
        seeds, diffs = paired_differences(by_seed(row, metric), by_seed(reference, metric))
        intervals[metric] = t_interval(diffs)
    return Paired(row, reference, seeds, intervals) if seeds else None


def pair_rows(rows: Sequence, by_hparams: bool = True) -> list[Paired]:
    """Every row against each reference method of its block, in row order, then reference order; a variant
    row against its own method's row first."""
    # a variant row (tune.variants) is compared, never compared with: the reference is the method's own row.
    # A variant is compared first with its own method's row (what its settings changed), then the references.
    index = {(_block(r, by_hparams), r.method_key): r for r in rows if getattr(r, "variant", None) is None}
    out = []
    for row in rows:
        if getattr(row, "variant", None) is not None:
            refs = (row.method_key,) + tuple(r for r in REFERENCES if r != row.method_key)
        else:
            refs = _references(row.method_key)
        for ref in refs:
            other = index.get((_block(row, by_hparams), ref))
            pair = None if other is None else compare(row, other)
            if pair is not None:
                out.append(pair)
    return out
