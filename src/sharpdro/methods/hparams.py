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
