"""Sharpness-aware minimisation (Foret et al. 2021) and ASAM (Kwon et al. 2021)."""
from __future__ import annotations

from sharpdro.backends.torch.algorithms.base import (Algorithm, bn_second_pass, params_with_grad,
                                                     per_sample_losses, restore_, sam_perturb_)


class SAM(Algorithm):
    """Sharpness-aware minimisation (Foret et al. 2021); ASAM with ``adaptive``.

    Ascent on the batch mean loss to w + eps, gradient of the batch mean loss at
    w + eps, restore w, optimizer step with that gradient.  BatchNorm running
    statistics in the second pass follow ``bn_second_pass``.
    """

    name = "sam"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = float(self.hparams["rho"])
        self.adaptive = bool(self.hparams["adaptive"])
        self.bn_policy = self.hparams["bn_second_pass"]

    def update(self, x, y, g, idx):
        opt = self._opt()
        opt.zero_grad(set_to_none=True)
        logits, per = per_sample_losses(self.model, x, y, self.amp)
        per.mean().backward()
        params = params_with_grad(self.model)
        saved = sam_perturb_(params, self.rho, self.adaptive)
        opt.zero_grad(set_to_none=True)
        with bn_second_pass(self.model, self.bn_policy):
            _, per_adv = per_sample_losses(self.model, x, y, self.amp)
            per_adv.mean().backward()
        restore_(params, saved)
        opt.step()
        return self._stats(logits, per, y)
