"""Sharpness-aware minimisation (Foret et al. 2021); ASAM (Kwon et al. 2021) with ``adaptive``."""
from sharpdro.methods.hparams import SAM_HPARAMS
from sharpdro.methods.registry import MethodSpec, register

SPEC = register(MethodSpec(
    name="sam", label="SAM", order=1, passes=2,
    summary="gradient of the batch loss at w + eps, eps the (A)SAM ascent of radius rho",
    hparams=dict(SAM_HPARAMS),
))
