"""Hyperparameters shared by several methods, declared once (the config keys ``algorithm.<name>``).

Each :class:`~sharpdro.fields.Field`'s ``search`` is the distribution a tuning sweep draws
the key from (:mod:`sharpdro.experiments.tuning`); ``None``: the key is not tuned.
"""
from __future__ import annotations

from typing import Any, MutableMapping

from sharpdro.fields import NUM, Field

SAM_RHO = 0.05   # SAM's radius (Foret et al.; the official SharpDRO code)
ASAM_RHO = 2.0   # ASAM's radius in its authors' code (davda54/sam): ~40x SAM's, since eps is scaled by |w|

# SAM family (sam, sharpdro, sharpdro_agnostic, eiil over sharpdro)
SAM_HPARAMS = {
    "rho": Field(None, NUM, f"SAM radius (null: {SAM_RHO}, or {ASAM_RHO} with adaptive, the ASAM authors')",
                 min=0.0, nullable=True, search=("log_uniform", 0.01, 0.5)),
    "adaptive": Field(False, bool, "ASAM: scale the perturbation by |w| (a variant chosen, not tuned)"),
    "bn_second_pass": Field("freeze", str, "BatchNorm running statistics in the second pass",
                            choices=("freeze", "update")),
}
# ASAM's radius is of another scale: a tuning sweep with adaptive=true draws rho from this instead
ASAM_RHO_SEARCH = ("log_uniform", 0.5, 5.0)

# group weights (groupdro, sharpdro, eiil)
GROUP_HPARAMS = {
    "eta": Field(0.01, NUM, "exponentiated-gradient step size of the group weights q", min=0.0,
                 search=("log_uniform", 1e-3, 1.0)),
    "gen_adjustment": Field(0.0, NUM, "GroupDRO generalisation adjustment C (loss + C/sqrt(n_g))", min=0.0),
    "q_absent": Field("zero", str, "a group absent from the batch: 'zero' gives it loss 0 in the q update (the "
                      "released SharpDRO and GroupDRO code), so its q shrinks; 'skip' leaves its q unchanged and "
                      "renormalises the present groups within their own mass", choices=("zero", "skip"),
                      search=("choice", ("zero", "skip"))),
}

# the sampled second pass (sam, sharpdro): see sharpdro.methods.sampling
SAMPLED_PASS_HPARAMS = {
    "second_pass_fraction": Field(1.0, NUM, "fraction f of the batch the second (perturbed) pass runs on, "
                                  "drawn with probability proportional to each sample's weight in the "
                                  "second-pass loss (1: the exact step)", min=1e-6, max=1.0),
    "second_pass_sampling": Field("systematic", str, "draw of the sampled second pass: systematic "
                                  "(one uniform, stratified by weight) or multinomial (i.i.d.)",
                                  choices=("systematic", "multinomial")),
    "sampled_bn_stats": Field("sample", str, "BatchNorm in a sampled second pass: the subsample's own "
                              "statistics (biased, near the exact step) or the first pass's full-batch ones "
                              "(unbiased for a frozen-statistics step far from the exact one; trains badly)",
                              choices=("sample", "first_pass")),
}

ADD_BACK_FIRST_GRAD = Field(True, bool, "SharpDRO: add the first-pass gradient to the second (official code)")


def resolve_rho(hparams: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``rho: null`` -> the radius of the chosen variant (SAM 0.05, ASAM 2.0), in place; returns ``hparams``."""
    if "rho" in hparams and hparams["rho"] is None:
        hparams["rho"] = ASAM_RHO if hparams.get("adaptive") else SAM_RHO
    return hparams


def search_space(key: str, field: Field, hparams: MutableMapping[str, Any]) -> tuple | None:
    """The distribution a tuning trial draws ``key`` from, given the trial's fixed keys."""
    if key == "rho" and hparams.get("adaptive"):
        return ASAM_RHO_SEARCH
    return field.search
