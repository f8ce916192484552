"""SharpDRO (Huang et al., CVPR 2023), distribution-aware: group DRO on the sharpness of each severity group."""
from sharpdro.fields import Field
from sharpdro.methods.groupdro import GROUP_BUFFERS
from sharpdro.methods.hparams import ADD_BACK_FIRST_GRAD, GROUP_HPARAMS, SAM_HPARAMS, SAMPLED_PASS_HPARAMS
from sharpdro.methods.sampling import SAMPLER_BUFFERS
from sharpdro.methods.registry import Q_RECORD, MethodSpec, register

SHARPDRO_HPARAMS = {
    **SAM_HPARAMS,
    **GROUP_HPARAMS,
    "perturb_on": Field("batch", str, "SharpDRO ascent direction: batch mean loss (official code) or the "
                        "q-weighted group loss (paper)", choices=("batch", "worst")),
    "add_back_first_grad": ADD_BACK_FIRST_GRAD,
    **SAMPLED_PASS_HPARAMS,
}

SPEC = register(MethodSpec(
    name="sharpdro", label="SharpDRO", order=5, passes=2, needs_groups=True,
    summary="SAM ascent, then the q-weighted sharpness of the severity groups (q by exponentiated gradient)",
    hparams=SHARPDRO_HPARAMS,
    buffers=GROUP_BUFFERS + SAMPLER_BUFFERS,
    record_keys=Q_RECORD,
    group_sampling=True,
    tune=("algorithm.rho", "algorithm.eta", "algorithm.q_absent", "data.sampler"),
))
