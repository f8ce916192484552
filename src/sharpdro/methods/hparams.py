"""Hyperparameters shared by several methods, declared once (the config keys ``algorithm.<name>``)."""
from __future__ import annotations

from sharpdro.fields import NUM, Field

# SAM family (sam, sharpdro, sharpdro_agnostic, eiil over sharpdro)
SAM_HPARAMS = {
    "rho": Field(0.05, NUM, "SAM radius", min=0.0, search=("log_uniform", 0.01, 0.5)),
    "adaptive": Field(False, bool, "ASAM: scale the perturbation by |w|", search=("choice", (False, True))),
    "bn_second_pass": Field("freeze", str, "BatchNorm running statistics in the second pass",
                            choices=("freeze", "update")),
}

# group weights (groupdro, sharpdro, eiil)
GROUP_HPARAMS = {
    "eta": Field(0.01, NUM, "exponentiated-gradient step size of the group weights q", min=0.0,
                 search=("log_uniform", 1e-3, 1.0)),
    "gen_adjustment": Field(0.0, NUM, "GroupDRO generalisation adjustment C (loss + C/sqrt(n_g))", min=0.0,
                            search=("uniform", 0.0, 4.0)),
}

ADD_BACK_FIRST_GRAD = Field(True, bool, "SharpDRO: add the first-pass gradient to the second (official code)")
