"""Accuracy and calibration of logits, in NumPy: the framework-neutral core both backends use.

Definitions (every table, summary and evaluation uses these):

- **ECE** (expected calibration error, Guo et al. 2017): the confidence ``max_k p_k`` of
  each image falls in one of ``ECE_BINS`` = 15 equal-width bins ``((m-1)/15, m/15]``
  (a confidence of exactly 0 goes to the first); ECE = sum over bins of
  ``n_m / n * |accuracy_m - mean confidence_m|``.  In [0, 1].
- **NLL**: the mean negative log-likelihood ``-log p_y`` (natural log), i.e. the mean
  cross-entropy; computed from the logits by a stable log-sum-exp in float64.
- **Brier score**: the mean over images of ``sum_k (p_k - 1[k = y])^2`` (the multi-class
  form, in [0, 2]).

Everything is accumulated as sums (:func:`score_sums`) so that shards of a set
(data-parallel ranks, batches) add up, then finished by :func:`finish_sums`.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

ECE_BINS = 15
CALIBRATION_KEYS = ("ece", "nll", "brier")

# Layout of a sums vector: correct, nll sum, brier sum, count, then per bin: count, confidence sum, correct sum.
_HEAD = 4


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def _bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)


def score_sums(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Additive statistics of a batch of logits [N, C] and integer labels [N] (float64 vector)."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.zeros(_HEAD + 3 * bins, dtype=np.float64)
    if len(labels) == 0:
        return out
    logp = log_softmax(logits)
    p = np.exp(logp)
    rows = np.arange(len(labels))
    pred = np.argmax(logits, axis=1)  # the first maximum on ties, as torch.argmax
    correct = (pred == labels).astype(np.float64)
    conf = p.max(axis=1)
    sq = (p * p).sum(axis=1) - 2.0 * p[rows, labels] + 1.0
    out[0] = correct.sum()
    out[1] = -logp[rows, labels].sum()
    out[2] = sq.sum()
    out[3] = len(labels)
    b = _bin_index(conf, bins)
    out[_HEAD:_HEAD + bins] = np.bincount(b, minlength=bins)
    out[_HEAD + bins:_HEAD + 2 * bins] = np.bincount(b, weights=conf, minlength=bins)
    out[_HEAD + 2 * bins:] = np.bincount(b, weights=correct, minlength=bins)
    return out


def finish_sums(sums: np.ndarray, bins: int = ECE_BINS) -> dict:
    """``{'accuracy', 'nll', 'brier', 'ece', 'count'}`` from :func:`score_sums` (summed over shards)."""
    s = np.asarray(sums, dtype=np.float64)
    n = s[3]
    if n <= 0:
        nan = float("nan")
        return {"accuracy": nan, "nll": nan, "brier": nan, "ece": nan, "count": 0}
    conf = s[_HEAD + bins:_HEAD + 2 * bins]
    corr = s[_HEAD + 2 * bins:]
    ece = float(np.abs(corr - conf).sum() / n)  # sum_m n_m/n |acc_m - conf_m| = sum_m |correct_m - conf_m| / n
    return {"accuracy": float(s[0] / n), "nll": float(s[1] / n), "brier": float(s[2] / n), "ece": ece,
            "count": int(n)}


def calibration(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """ECE, NLL, Brier (and accuracy) of one set of logits."""
    return finish_sums(score_sums(logits, labels, bins), bins)


# ------------------------------------------------------------------------ direct definitions
def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of probabilities [N, C], written as the definition (a loop over bins)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    total = 0.0
    for m in range(bins):
        lo, hi = m / bins, (m + 1) / bins
        inside = (conf > lo) & (conf <= hi) if m else (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(total)


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(labels)]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    return float(-np.log(probs[np.arange(len(labels)), np.asarray(labels)]).mean())


# ------------------------------------------------------------------------ evaluation of arrays
EVAL_CHUNK = 8192  # images per predict call: bounds the host memory of the logits


def evaluate_arrays(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
                    chunk: int = EVAL_CHUNK) -> np.ndarray:
    """:func:`score_sums` of ``predict(images)`` (logits), computed chunk by chunk."""
    labels = np.asarray(labels)
    total = np.zeros(_HEAD + 3 * ECE_BINS, dtype=np.float64)
    for start in range(0, len(labels), chunk):
        logits = np.asarray(predict(images[start:start + chunk]))
        total += score_sums(logits, labels[start:start + chunk])
    return total


def severity_block(severities, sums: np.ndarray) -> dict:
    """The per-severity block of metrics.jsonl from a [S, K] array of sums: accuracy, loss (= NLL),
    ECE, NLL, Brier, each ``{severity: value}``, plus average / worst / worst_severity of the accuracy."""
    from sharpdro.metrics import summarize

    done = {str(s): finish_sums(row) for s, row in zip(severities, np.asarray(sums))}
    acc = {s: d["accuracy"] for s, d in done.items()}
    block = {"accuracy": acc, "loss": {s: d["nll"] for s, d in done.items()}, **summarize(acc)}
    for key in CALIBRATION_KEYS:
        block[key] = {s: d[key] for s, d in done.items()}
    return block


def summary_fields(block: Mapping, prefix: str = "test") -> dict:
    """``test_ece`` / ``test_nll`` / ``test_brier`` (per severity) and their means, for summary.json;
    empty for a block written before calibration was recorded."""
    out = {}
    for key in CALIBRATION_KEYS:
        if key in block:
            vals = {str(k): float(v) for k, v in block[key].items()}
            out[f"{prefix}_{key}"] = vals
            out[f"{prefix}_{key}_average"] = float(np.mean(list(vals.values()))) if vals else float("nan")
    return out


def format_calibration(block: Mapping, group_names: Mapping[int, str] | None = None) -> str:
    """ECE (%), NLL and Brier per severity of an evaluation block, one line each (empty when absent);
    ``group_names``: the columns are named groups (groups from the data)."""
    if not all(k in block for k in CALIBRATION_KEYS):
        return ""
    sevs = sorted(block["ece"], key=int)
    names = [group_names.get(int(s), str(s)) if group_names else f"s{s}" for s in sevs]
    w = max(8, *(len(n) + 2 for n in names))
    head = "calibration".ljust(12) + "".join(n.rjust(w) for n in names)
    rows = [head]
    for key, scale, label in (("ece", 100.0, "ECE (%)"), ("nll", 1.0, "NLL"), ("brier", 1.0, "Brier")):
        rows.append(label.ljust(12) + "".join(f"{scale * float(block[key][s]):.3f}".rjust(w) for s in sevs))
    return "\n".join(rows)
