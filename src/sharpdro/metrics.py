"""Per-severity summaries, training sums and model selection: the one place they are computed
(the per-severity evaluation block itself, from logits, is :func:`sharpdro.calibration.severity_block`).

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

    ``sums`` is one flat float64 array of :meth:`size` entries (on the device for PyTorch, so a step
    never waits for the host): the loss, correct count and image count per severity (``G`` each),
    the severity sum and the count of the samples an agnostic algorithm selected, then the
    selected count per severity (``G``).  The backend gives
    ``to_float`` (an array -> float64) and ``index_add(target, index, values)`` (in place);
    :meth:`numpy` builds the NumPy one.  :meth:`stats` is :func:`train_epoch_stats` of the sums.
    """

    def __init__(self, num_groups: int, sums, to_float, index_add):
        self.num_groups = int(num_groups)
        self.sums = sums
        self._float, self._index_add = to_float, index_add
        self.steps = 0

    @staticmethod
    def size(num_groups: int) -> int:
        return 4 * int(num_groups) + 2

    @classmethod
    def numpy(cls, num_groups: int) -> "TrainEpochSums":
        return cls(num_groups, np.zeros(cls.size(num_groups), np.float64), lambda a: np.asarray(a, np.float64),
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
            self._index_add(self.sums[3 * G + 2:4 * G + 2], severity, sel)
        self.steps += 1

    def stats(self, q=None, to_numpy=np.asarray) -> dict:
        """The epoch's statistics (``to_numpy`` brings the sums to the host)."""
        G = self.num_groups
        s = np.asarray(to_numpy(self.sums), dtype=np.float64)
        return train_epoch_stats(s[:G], s[G:2 * G], s[2 * G:3 * G], self.steps, q=q,
                                 selected_severity_sum=float(s[3 * G]), selected_count=float(s[3 * G + 1]),
                                 selected_by_severity=s[3 * G + 2:4 * G + 2] if len(s) >= 4 * G + 2 else None)


def train_epoch_stats(loss_sum, correct_sum, count, steps: int, q=None, selected_severity_sum: float = 0.0,
                      selected_count: float = 0.0, selected_by_severity=None) -> dict:
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
        if selected_by_severity is not None:  # the share of each severity's training samples selected
            stats["agnostic_selected_fraction"] = (np.asarray(selected_by_severity, np.float64) / denom).tolist()
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

    Each record has ``epoch`` and, when evaluated, a ``val`` block (and a ``test`` block: at every
    evaluated epoch, or with ``eval.test=selected`` at the selected one only) holding ``average``
    and ``worst``.  ``worst`` / ``average`` maximise that validation score (earliest epoch on
    ties); ``last`` takes the last evaluated epoch; ``oracle_*`` select on the *test* set and
    exist only for labelled oracle comparisons (:class:`SelectionError` without per-epoch test).
    """
    from sharpdro.errors import SelectionError

    evaluated = [r for r in records if "val" in r]
    if not evaluated:
        raise ValueError("no evaluated epoch in the metrics")
    if rule == "last":
        return evaluated[-1]
    if rule in ("worst", "average"):
        split, key = "val", rule
    elif rule in ("oracle_worst", "oracle_average"):
        split, key = "test", rule.split("_", 1)[1]
        with_test = sum("test" in r for r in evaluated)
        if with_test < len(evaluated):
            raise SelectionError(
                f"selection {rule!r} selects on the test set, but the run evaluated the test set at only "
                f"{with_test} of its {len(evaluated)} evaluated epochs (eval.test=selected: only at the epoch its "
                f"eval.selection picked); select on validation (worst, average, last), or train with "
                f"eval.test=every")
    else:
        raise ValueError(f"unknown selection rule {rule!r}; allowed: {', '.join(SELECTION_RULES)}")
    best = evaluated[0]
    for r in evaluated[1:]:
        if r[split][key] > best[split][key]:
            best = r
    return best


# ------------------------------------------------------------------ the agnostic selection's diagnostics
AUROC_SEVERE = 3  # severities >= this are the "worst case" of the agnostic diagnostics (vs severity 0)


def auroc(scores, positive) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (bool) against the rest: the probability that a
    positive scores above a negative, ties counting one half (Mann-Whitney U with average ranks); nan if either
    side is empty or a score is not finite."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0 or not np.isfinite(scores).all():
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average rank (1-based) over each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def severity_auroc(scores, severity, severe: int = AUROC_SEVERE) -> float:
    """AUROC of ``scores`` for severity >= ``severe`` against severity 0 (the samples in between are left out)."""
    scores, severity = np.asarray(scores, dtype=np.float64), np.asarray(severity)
    keep = (severity == 0) | (severity >= severe)
    return auroc(scores[keep], severity[keep] >= severe)


def agnostic_diagnostics(session, hparams, train, val: Mapping, batch_size: int) -> dict:
    """The agnostic selection's per-epoch diagnostics, computed outside every training step.

    ``agnostic_auroc_train``: AUROC (severity >= 3 against 0) of the training memory as the global selection
    sees it (moving average, normalised within each class); ``agnostic_auroc_val``: of the score of every
    validation image (every severity; eval mode) normalised with the class statistics of the training memory
    (``class_normalize``), or raw without a memory.  ``train`` / ``val``: the splits' arrays with severities.
    """
    from sharpdro.methods.sharpdro_agnostic import MEMORY_SELECTIONS, class_statistics, normalised

    out = {}
    C = int(max(int(np.max(train.labels)), *(int(np.max(v.labels)) for v in val.values())) + 1)
    stats = None
    if hparams["select"] in MEMORY_SELECTIONS:
        memory = session.algorithm_buffer("score_memory").astype(np.float64)
        labels = session.algorithm_buffer("memory_labels")
        normalize = hparams["select"] == "global" and hparams["class_normalize"]
        stats = class_statistics(memory, labels, C, normalize)
        z = normalised(memory, labels, stats) if hparams["select"] == "global" else memory
        seen = np.isfinite(z)
        out["agnostic_auroc_train"] = severity_auroc(z[seen], np.asarray(train.severity)[seen])
    sevs = sorted(val)
    images = np.concatenate([val[s].images for s in sevs])
    labels = np.concatenate([val[s].labels for s in sevs])
    severity = np.concatenate([val[s].severity for s in sevs])
    scores = session.ood_scores(images, labels, batch_size)
    if stats is not None:
        scores = normalised(scores, labels, stats)
    out["agnostic_auroc_val"] = severity_auroc(scores, severity)
    return out
