"""Sharpness-aware minimisation (Foret et al. 2021); ASAM (Kwon et al. 2021) with ``adaptive``."""
from sharpdro.methods.hparams import SAM_HPARAMS, SAMPLED_PASS_HPARAMS
from sharpdro.methods.sampling import SAMPLER_BUFFERS
from sharpdro.methods.registry import MethodSpec, register

SPEC = register(MethodSpec(
    name="sam", label="SAM", order=1, passes=2,
    summary="gradient of the batch loss at w + eps, eps the (A)SAM ascent of radius rho",
    hparams={**SAM_HPARAMS, **SAMPLED_PASS_HPARAMS},
    buffers=SAMPLER_BUFFERS,
))
