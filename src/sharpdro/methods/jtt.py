"""Just Train Twice (Liu et al. 2021)."""
from __future__ import annotations

import numpy as np

from sharpdro.fields import NUM, Field
from sharpdro.methods.registry import SELECTED_RECORD, MethodSpec, Prestage, register


def error_weights(errors: np.ndarray, lambda_up: float) -> np.ndarray:
    """Per-point weights: ``lambda_up`` on the error set, 1 elsewhere (float32)."""
    return np.where(np.asarray(errors, dtype=bool), np.float32(lambda_up), np.float32(1.0)).astype(np.float32)


SPEC = register(MethodSpec(
    name="jtt", label="JTT", order=3,
    summary="ERM reference, then cross-entropy with its misclassified points upweighted",
    hparams={
        "jtt_epochs": Field(1, int, "JTT identification epochs T", min=1, search=("int_uniform", 1, 5)),
        "jtt_lambda_up": Field(6.0, NUM, "JTT upweight of the error set", min=1.0,
                               search=("log_uniform", 2.0, 100.0)),
    },
    buffers=("error_set", "weights"),
    record_keys=SELECTED_RECORD,
    prestage=Prestage("ERM for jtt_epochs epochs; the error set is what it misclassifies", "error_set",
                      stand_in=lambda n: np.arange(n) % 5 == 0),
))
