"""Distribution-agnostic SharpDRO: per-sample worst-case weights from an OOD score instead of groups.

The selection (``select``):

- ``global`` (the default): every training sample's score goes into a per-sample memory, an
  exponential moving average across epochs indexed by the sample (``memory_decay``); the
  memory is normalised within each class (``class_normalize``: z = (m - mean_c) / std_c over
  the memory's entries of class c); a sample is selected when its z is at or above the
  (1 - ``fraction``) quantile of z over the whole training set (the top fraction f of the
  training set, not of the batch).  The class statistics and the threshold are refreshed from
  the memory at the start of each epoch and then every ``refresh_steps`` steps
  (:func:`selection_statistics`), so a drift of the scores within an epoch does not leave the
  threshold behind; the memory is written at every step, including the ``warmup_epochs``
  first epochs, during which nothing is selected (the step is then ERM's).  Hard weights are
  1 / max(k, f B) for the k selected samples of a batch of B: the expected count, so a batch
  with few selected samples does not weigh them up, and never more than 1 in all.
- ``top_fraction``: the ceil(f B) highest current scores of the batch (the first reading);
- ``threshold``: the current scores above the (1 - f) quantile of the latest scores of the
  training set (the first reading's running variant).

The NumPy functions here are the reference of the selection statistics: the MindSpore step
uses them, the PyTorch step computes the same on the device, and the engine's diagnostics
(:mod:`sharpdro.metrics`) use them with the severity labels, outside every step.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from sharpdro.errors import ConfigError
from sharpdro.fields import NUM, Field
from sharpdro.methods.hparams import ADD_BACK_FIRST_GRAD, SAM_HPARAMS
from sharpdro.methods.registry import SELECTED_RECORD, MethodSpec, register

# model output scores (the paper's idea: an OOD score of the model's own predictions)
OUTPUT_SCORES = ("msp", "energy", "entropy", "loss")
# ours: feature-space scores from the penultimate features h (the input of the last linear layer):
# ``feature_norm`` -||h||_2 (a small feature norm = out-of-distribution) and ``gradnorm`` (GradNorm,
# Huang et al. 2021); and a model-free reference, the high-frequency energy of the input image
FEATURE_SCORES = ("feature_norm", "gradnorm")
SCORES = OUTPUT_SCORES + FEATURE_SCORES + ("input_hf",)
SELECTIONS = ("top_fraction", "threshold", "global")
MEMORY_SELECTIONS = ("threshold", "global")  # the rules that keep a per-sample score memory

HPARAMS = {
    **SAM_HPARAMS,
    "add_back_first_grad": ADD_BACK_FIRST_GRAD,
    "score": Field("input_hf", str, "out-of-distribution score picking worst-case samples (input_hf, the "
                   "default: model-free, the image's high-frequency energy; the model scores did not find the "
                   "worst case in docs/results/agnostic)",
                   choices=SCORES, identity_default="msp"),
    "select": Field("global", str, "worst-case selection rule (global: top fraction of the training set by "
                    "a per-sample score memory)", choices=SELECTIONS, identity_default="top_fraction"),
    "fraction": Field(0.05, NUM, "selected fraction f (of the training set for select=global, of the batch "
                      "for top_fraction; quantile 1-f for threshold)",
                      min=1e-6, max=1.0, search=("uniform", 0.05, 0.5), identity_default=0.2),
    "weighting": Field("hard", str, "per-sample weights of the selection", choices=("hard", "soft")),
    "temperature": Field(1.0, NUM, "softmax temperature of soft weighting (select=global: of the sigmoid "
                         "of z - threshold)", min=1e-6, search=("log_uniform", 0.1, 10.0)),
    "second_pass_selected_only": Field(False, bool, "agnostic: run the second pass on the selected "
                                       "samples only (faster; hard weighting)"),
    "warmup_epochs": Field(2, int, "select=global: epochs of plain ERM steps before the selection starts "
                           "(the score memory fills meanwhile)", min=0),
    "memory_decay": Field(0.5, NUM, "select=global: the score memory's moving average, "
                          "m <- decay m + (1 - decay) score", min=0.0, max=0.999,
                          search=("uniform", 0.0, 0.9)),
    "refresh_steps": Field(10, int, "select=global: refresh the class statistics and the threshold from the "
                           "memory every this many steps (on the device, no host sync; 0: at the start of "
                           "each epoch only)", min=0),
    "class_normalize": Field(True, bool, "select=global: normalise the memory within each class "
                             "(z = (m - mean_class) / std_class) before the global quantile"),
}


def check(h: Mapping[str, Any]) -> None:
    if h["second_pass_selected_only"] and (h["select"] == "threshold" or h["weighting"] != "hard"):
        raise ConfigError("algorithm.second_pass_selected_only needs select='top_fraction' or 'global' and "
                          "weighting='hard' (equally weighted samples)")


def top_k_count(fraction: float, batch: int) -> int:
    """k = ceil(f * B), at least 1 and at most B (a tiny tolerance absorbs 0.2 * 100 = 20.000000000000004)."""
    return max(1, min(batch, math.ceil(fraction * batch - 1e-9)))


def unknown_score(kind: str) -> ConfigError:
    return ConfigError(f"unknown agnostic score {kind!r}; allowed: {', '.join(SCORES)}")


# ---------------------------------------------------------------- the selection's statistics (NumPy reference)
def input_high_frequency(x: np.ndarray) -> np.ndarray:
    """The ``input_hf`` score of each image of ``x`` [N, C, H, W] (H, W >= 3): the mean squared 4-neighbour
    Laplacian (float64). The NumPy reference of the backends' device versions; the result scripts use it to
    score images without a model."""
    x = np.asarray(x, dtype=np.float64)
    lap = 4 * x[:, :, 1:-1, 1:-1] - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1] - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:]
    return np.square(lap).mean((1, 2, 3))


def class_statistics(memory: np.ndarray, labels: np.ndarray, num_classes: int, normalize: bool = True) -> np.ndarray:
    """``[2, C]``: the mean and the standard deviation (ddof 0) of the memory's finite entries of each class.

    A class with no entry, or ``normalize=False``: mean 0, std 1; a zero std counts as 1.
    """
    stats = np.zeros((2, num_classes), dtype=memory.dtype)
    stats[1] = 1
    if not normalize:
        return stats
    ok = np.isfinite(memory) & (labels >= 0)
    for c in range(num_classes):
        v = memory[ok & (labels == c)].astype(np.float64)
        if len(v):
            std = np.sqrt(np.mean((v - v.mean()) ** 2))
            stats[0, c], stats[1, c] = v.mean(), (std if std > 0 else 1.0)
    return stats


def normalised(memory: np.ndarray, labels: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """z = (m - mean_y) / std_y (labels < 0, unseen points, give nan)."""
    lab = np.maximum(labels, 0)
    z = (memory - stats[0][lab]) / stats[1][lab]
    return np.where(labels >= 0, z, np.nan).astype(memory.dtype)


def selection_statistics(memory: np.ndarray, labels: np.ndarray, num_classes: int, fraction: float,
                         normalize: bool = True) -> tuple[np.ndarray, float]:
    """(class statistics ``[2, C]``, the global threshold: the (1 - f) quantile of z over the seen points, linear
    interpolation as ``torch.quantile``; nan while nothing has been seen)."""
    stats = class_statistics(memory, labels, num_classes, normalize)
    z = normalised(memory, labels, stats)
    z = z[np.isfinite(z)]
    thr = float(np.quantile(z.astype(np.float64), 1.0 - fraction)) if len(z) else float("nan")
    return stats, thr


def global_weights(selected: np.ndarray, z: np.ndarray, threshold: float, fraction: float, weighting: str,
                   temperature: float) -> np.ndarray:
    """The per-sample weights of the global selection in a batch (float64): ``hard`` [selected] / max(k, f B),
    ``soft`` sigmoid((z - threshold) / T) / max(sum of them, f B)."""
    floor = fraction * len(z)
    if weighting == "hard":
        w = selected.astype(np.float64)
    else:
        w = 1.0 / (1.0 + np.exp(-(z - threshold) / temperature))
    return w / max(float(w.sum()), floor)


def memory_update(old: np.ndarray, score: np.ndarray, decay: float) -> np.ndarray:
    """The moving average of one sample's score: the score itself on its first visit (old is nan)."""
    return np.where(np.isnan(old), score, decay * old + (1.0 - decay) * score).astype(old.dtype)


SPEC = register(MethodSpec(
    name="sharpdro_agnostic", label="SharpDRO (agnostic)", order=6, passes=2,
    summary="SharpDRO with per-sample weights of the samples an OOD score ranks worst",
    hparams=HPARAMS,
    check=check,
    # select='threshold' / 'global': the per-sample memory, the label of each entry, the class statistics and
    # the global threshold of the current epoch
    buffers=("score_memory", "memory_labels", "class_stats", "threshold"),
    record_keys=SELECTED_RECORD + ("agnostic_selected_fraction", "agnostic_auroc_train", "agnostic_auroc_val"),
))
