"""Just Train Twice (Liu et al. 2021), as its authors run it (anniesch/jtt) by default.

Identification: an ERM model trained on its own for ``jtt_epochs`` (T) epochs at a constant
learning rate ``jtt_lr`` (null: the run's ``train.lr``); the error set E is the training
points it misclassifies (eval mode, no augmentation).

Second stage (``jtt_mode``):

- ``upsample`` (the authors'): an epoch is the training set plus ``jtt_lambda_up`` extra copies
  of E, shuffled: N + lambda |E| samples, each error point seen 1 + lambda times, plain mean loss;
- ``reweight``: an epoch is the N points; the loss of a batch is sum_i w_i l_i / sum_i w_i with
  w = lambda on E, 1 elsewhere (an error point weighs lambda; an epoch stays N / B steps).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from sharpdro.errors import ConfigError
from sharpdro.fields import NUM, Field
from sharpdro.methods.registry import SELECTED_RECORD, MethodSpec, Prestage, register

MODES = ("upsample", "reweight")


def error_weights(errors: np.ndarray, lambda_up: float) -> np.ndarray:
    """Per-point weights: ``lambda_up`` on the error set, 1 elsewhere (float32)."""
    return np.where(np.asarray(errors, dtype=bool), np.float32(lambda_up), np.float32(1.0)).astype(np.float32)


def loss_weights(errors: np.ndarray, lambda_up: float, mode: str) -> np.ndarray:
    """The per-point loss weights of the second stage: :func:`error_weights` (reweight) or ones (upsample)."""
    if mode == "upsample":
        return np.ones(len(errors), dtype=np.float32)
    return error_weights(errors, lambda_up)


def upsampled_indices(errors: np.ndarray, lambda_up: float) -> np.ndarray:
    """The multiset of one upsampled epoch: every index once, plus ``lambda_up`` extra copies of each error point.

    Length N + lambda |E|, in index order (the epoch's shuffle permutes it).
    """
    errors = np.asarray(errors, dtype=bool)
    lam = int(round(float(lambda_up)))
    extra = np.repeat(np.flatnonzero(errors), lam)
    return np.concatenate([np.arange(len(errors), dtype=np.int64), extra.astype(np.int64)])


def prestage_summary(errors: np.ndarray, report: Mapping[str, Any], mode: str, lambda_up: float) -> dict:
    """What the identification stage found (both backends' ``prestage_info``): |E|/N, the identification
    model's training accuracy (eval mode, no augmentation: 1 - |E|/N), its training ``report``, and the
    samples of a second-stage epoch (N + lambda |E| when upsampling)."""
    errors = np.asarray(errors, dtype=bool)
    n = max(len(errors), 1)
    size = int(errors.sum())
    epoch = len(errors) + (size * int(round(float(lambda_up))) if mode == "upsample" else 0)
    return {"error_set_size": size, "train_size": int(len(errors)), "error_set_fraction": float(size / n),
            "identification_train_accuracy": float(1.0 - size / n), "identification": report, "mode": mode,
            "lambda_up": lambda_up, "epoch_samples": int(epoch), "members": errors}


def check(h: Mapping[str, Any]) -> None:
    lam = float(h["jtt_lambda_up"])
    if h["jtt_mode"] == "upsample" and abs(lam - round(lam)) > 1e-9:
        raise ConfigError(f"algorithm.jtt_mode='upsample' repeats the error set jtt_lambda_up times: "
                          f"jtt_lambda_up must be a whole number, got {lam}; round it or use jtt_mode='reweight'")


def error_set_caveat(prestage: Mapping[str, Any]) -> str | None:
    """JTT upweights the points its identification model gets wrong, assuming they are a minority: a run
    whose error set is most of the training data is reported as such."""
    frac = prestage.get("error_set_fraction")
    if frac is None or frac <= 0.5:
        return None
    return f"error set {100 * frac:.0f}% of the training data (JTT assumes a minority)"


SPEC = register(MethodSpec(
    name="jtt", label="JTT", order=3,
    summary="ERM identification model, then retraining with its misclassified points upsampled (or upweighted)",
    hparams={
        "jtt_epochs": Field(1, int, "JTT identification epochs T", min=1, search=("int_uniform", 1, 5)),
        "jtt_lambda_up": Field(6.0, NUM, "JTT: extra copies (upsample) or loss weight (reweight) of the error set",
                               min=1.0, search=("choice", (4, 5, 6, 20, 50, 100))),
        "jtt_mode": Field("upsample", str, "JTT second stage: upsample the error set (the authors' code) or "
                          "reweight its loss within each batch", choices=MODES),
        "jtt_lr": Field(None, NUM, "JTT identification model's constant learning rate (null: train.lr)",
                        min=0.0, nullable=True),
    },
    check=check,
    buffers=("error_set", "weights"),
    record_keys=SELECTED_RECORD,
    prestage=Prestage("ERM for jtt_epochs epochs at a constant lr; the error set is what it misclassifies",
                      "error_set", stand_in=lambda n: np.arange(n) % 5 == 0, caveat=error_set_caveat),
))
