"""Distribution-agnostic SharpDRO: per-sample worst-case weights from an OOD score instead of groups."""
from __future__ import annotations

import math
from typing import Any, Mapping

from sharpdro.errors import ConfigError
from sharpdro.fields import NUM, Field
from sharpdro.methods.hparams import ADD_BACK_FIRST_GRAD, SAM_HPARAMS
from sharpdro.methods.registry import SELECTED_RECORD, MethodSpec, register

SCORES = ("msp", "energy", "entropy", "loss")

HPARAMS = {
    **SAM_HPARAMS,
    "add_back_first_grad": ADD_BACK_FIRST_GRAD,
    "score": Field("msp", str, "out-of-distribution score picking worst-case samples", choices=SCORES),
    "select": Field("top_fraction", str, "worst-case selection rule", choices=("top_fraction", "threshold")),
    "fraction": Field(0.2, NUM, "selected fraction (top_fraction) or quantile 1-f (threshold)",
                      min=1e-6, max=1.0, search=("uniform", 0.05, 0.5)),
    "weighting": Field("hard", str, "per-sample weights of the selection", choices=("hard", "soft")),
    "temperature": Field(1.0, NUM, "softmax temperature of soft weighting", min=1e-6,
                         search=("log_uniform", 0.1, 10.0)),
    "second_pass_selected_only": Field(False, bool, "agnostic: run the second pass on the selected "
                                       "samples only (faster; hard weighting)"),
}


def check(h: Mapping[str, Any]) -> None:
    if h["second_pass_selected_only"] and (h["select"] != "top_fraction" or h["weighting"] != "hard"):
        raise ConfigError("algorithm.second_pass_selected_only needs select='top_fraction' and "
                          "weighting='hard' (a fixed number of equally weighted samples)")


def top_k_count(fraction: float, batch: int) -> int:
    """k = ceil(f * B), at least 1 and at most B (a tiny tolerance absorbs 0.2 * 100 = 20.000000000000004)."""
    return max(1, min(batch, math.ceil(fraction * batch - 1e-9)))


def unknown_score(kind: str) -> ConfigError:
    return ConfigError(f"unknown agnostic score {kind!r}; allowed: {', '.join(SCORES)}")


SPEC = register(MethodSpec(
    name="sharpdro_agnostic", label="SharpDRO (agnostic)", order=6, passes=2,
    summary="SharpDRO with per-sample weights of the samples an OOD score ranks worst",
    hparams=HPARAMS,
    check=check,
    buffers=("score_memory",),  # select='threshold' only
    record_keys=SELECTED_RECORD,
))
