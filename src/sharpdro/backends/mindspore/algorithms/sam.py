"""Sharpness-aware minimisation (Foret et al. 2021) and ASAM (Kwon et al. 2021)."""
from __future__ import annotations

import numpy as np

from sharpdro.backends.mindspore.algorithms.base import Algorithm, BNSecondPass, register_step, restore, sam_perturb
from sharpdro.backends.mindspore.algorithms.sampling import SampledSecondPass


@register_step("sam")
class SAM(SampledSecondPass, Algorithm):
    """Ascent on the batch mean loss to w + eps, gradient of the batch mean loss at w + eps, restore w,
    optimizer step with that gradient; BatchNorm statistics in the second pass follow ``bn_second_pass``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = float(self.hparams["rho"])
        self.adaptive = bool(self.hparams["adaptive"])
        self.bn_policy = self.hparams["bn_second_pass"]
        BNSecondPass(self.model, self.bn_policy)  # validates the policy at construction
        self._init_sampler()

    def update(self, x, y, groups, idx):
        grad_fn = self._erm_grad()
        with self._capture_first_pass():
            (_, (logits, per)), grads = grad_fn(x, y)
        params = self._params()
        saved = sam_perturb(params, grads, self.rho, self.adaptive)
        if self.sampled:  # uniform weights 1 / B
            n = int(per.shape[0])
            grads_adv = self._sampled_grads(x, y, per, np.full(n, 1.0 / n, dtype=np.float32))
        else:
            with BNSecondPass(self.model, self.bn_policy):
                _, grads_adv = grad_fn(x, y)
        restore(params, saved)
        self._opt()(grads_adv)
        return self._stats(logits, per, y)
