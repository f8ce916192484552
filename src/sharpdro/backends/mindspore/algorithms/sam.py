"""Sharpness-aware minimisation (Foret et al. 2021) and ASAM (Kwon et al. 2021)."""
from __future__ import annotations

from sharpdro.backends.mindspore.algorithms.base import Algorithm, BNSecondPass, register_step, restore, sam_perturb


@register_step("sam")
class SAM(Algorithm):
    """Ascent on the batch mean loss to w + eps, gradient of the batch mean loss at w + eps, restore w,
    optimizer step with that gradient; BatchNorm statistics in the second pass follow ``bn_second_pass``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = float(self.hparams["rho"])
        self.adaptive = bool(self.hparams["adaptive"])
        self.bn_policy = self.hparams["bn_second_pass"]
        BNSecondPass(self.model, self.bn_policy)  # validates the policy at construction

    def update(self, x, y, groups, idx):
        grad_fn = self._erm_grad()
        (_, (logits, per)), grads = grad_fn(x, y)
        params = self._params()
        saved = sam_perturb(params, grads, self.rho, self.adaptive)
        with BNSecondPass(self.model, self.bn_policy):
            _, grads_adv = grad_fn(x, y)
        restore(params, saved)
        self._opt()(grads_adv)
        return self._stats(logits, per, y)
