"""Per-severity metrics and model selection: the one place they are computed.

Definitions used everywhere (tables, summaries, selection):
- accuracy at severity s: correct / total over that severity's evaluation set;
- **average** ("averaged accuracy"): the unweighted mean of the per-severity accuracies
  over severities 0..S (each severity's set holds the same images, so this is also the
  pooled accuracy);
- **worst**: the minimum per-severity accuracy (the group with the lowest accuracy,
  not the smallest group).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def group_mean(values: np.ndarray, groups: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` per group id (0 for an empty group) and the group counts."""
    groups = np.asarray(groups, dtype=np.int64)
    counts = np.bincount(groups, minlength=num_groups).astype(np.float64)
    sums = np.bincount(groups, weights=np.asarray(values, dtype=np.float64), minlength=num_groups)
    return sums / np.maximum(counts, 1.0), counts


def accuracy(correct, count) -> float:
    """``correct / count`` as a float; nan for an empty set."""
    return float(correct) / float(count) if count else float("nan")


class TrainEpochSums:
    """Per-severity sums of one training epoch, accumulated step by step in the backend's own arrays.

    ``sums`` is one flat float64 array (on the device for PyTorch, so a step never waits for the
    host): the loss, correct count and image count per severity (``G`` each), then the severity
    sum and the count of the samples an agnostic algorithm selected.  The backend gives
    ``to_float`` (an array -> float64) and ``index_add(target, index, values)`` (in place);
    :meth:`numpy` builds the NumPy one.  :meth:`stats` is :func:`train_epoch_stats` of the sums.
    """

    def __init__(self, num_groups: int, sums, to_float, index_add):
        self.num_groups = int(num_groups)
        self.sums = sums
        self._float, self._index_add = to_float, index_add
        self.steps = 0

    @classmethod
    def numpy(cls, num_groups: int) -> "TrainEpochSums":
        return cls(num_groups, np.zeros(3 * num_groups + 2, np.float64), lambda a: np.asarray(a, np.float64),
                   np.add.at)

    @property
    def loss_sum(self):
        return self.sums[:self.num_groups]

    def add(self, severity, per_sample_loss, correct, selected=None) -> None:
        """One step: ``severity`` (integer array) of each sample, its loss, whether it was classified correctly,
        and (agnostic algorithms) whether it was selected."""
        G = self.num_groups
        loss = self._float(per_sample_loss)
        self._index_add(self.sums[:G], severity, loss)
        self._index_add(self.sums[G:2 * G], severity, self._float(correct))
        self._index_add(self.sums[2 * G:3 * G], severity, self._float(severity) * 0 + 1)
        if selected is not None:
            sel = self._float(selected)
            self.sums[3 * G] += (sel * self._float(severity)).sum()
            self.sums[3 * G + 1] += sel.sum()
        self.steps += 1

    def stats(self, q=None, to_numpy=np.asarray) -> dict:
        """The epoch's statistics (``to_numpy`` brings the sums to the host)."""
        G = self.num_groups
        s = np.asarray(to_numpy(self.sums), dtype=np.float64)
        return train_epoch_stats(s[:G], s[G:2 * G], s[2 * G:3 * G], self.steps, q=q,
                                 selected_severity_sum=float(s[3 * G]), selected_count=float(s[3 * G + 1]))


def train_epoch_stats(loss_sum, correct_sum, count, steps: int, q=None, selected_severity_sum: float = 0.0,
                      selected_count: float = 0.0) -> dict:
    """A backend's per-epoch training statistics from per-severity sums (every backend reports the same)."""
    loss_sum, correct_sum, count = (np.asarray(a, dtype=np.float64) for a in (loss_sum, correct_sum, count))
    denom = np.maximum(count, 1.0)
    stats = {
        "loss": float(loss_sum.sum() / count.sum()),
        "accuracy": float(correct_sum.sum() / count.sum()),
        "group_loss": (loss_sum / denom).tolist(),
        "group_acc": (correct_sum / denom).tolist(),
        "group_count": count.astype(int).tolist(),
        "steps": int(steps),
    }
    if q is not None:
        stats["q"] = np.asarray(q, dtype=np.float32).tolist()
    if selected_count > 0:
        # the agnostic reading's check: selected samples should be more corrupted than the batch
        stats["agnostic_selected_severity"] = float(selected_severity_sum / selected_count)
        stats["agnostic_batch_severity"] = float((np.arange(len(count)) * count).sum() / count.sum())
    return stats


def summarize(acc_by_severity: Mapping) -> dict:
    """``{'0': a0, ...}`` -> ``{'average': mean, 'worst': min, 'worst_severity': s}``."""
    keys = sorted(acc_by_severity, key=int)
    vals = np.array([float(acc_by_severity[k]) for k in keys])
    i = int(np.argmin(vals))
    return {"average": float(vals.mean()), "worst": float(vals[i]), "worst_severity": int(keys[i])}


SELECTION_RULES = ("worst", "average", "last", "oracle_worst", "oracle_average")


def select_epoch(records: Sequence[Mapping], rule: str = "worst") -> Mapping:
    """Pick the record of the selected epoch from per-epoch records.

    Each record has ``epoch`` and, when evaluated, ``val`` / ``test`` blocks holding
    ``average`` and ``worst``.  ``worst`` / ``average`` maximise that validation score
    (earliest epoch on ties); ``last`` takes the last evaluated epoch; ``oracle_*``
    select on the *test* set and exist only for labelled oracle comparisons.
    """
    evaluated = [r for r in records if "val" in r and "test" in r]
    if not evaluated:
        raise ValueError("no evaluated epoch in the metrics")
    if rule == "last":
        return evaluated[-1]
    if rule in ("worst", "average"):
        split, key = "val", rule
    elif rule in ("oracle_worst", "oracle_average"):
        split, key = "test", rule.split("_", 1)[1]
    else:
        raise ValueError(f"unknown selection rule {rule!r}; allowed: {', '.join(SELECTION_RULES)}")
    best = evaluated[0]
    for r in evaluated[1:]:
        if r[split][key] > best[split][key]:
            best = r
    return best
