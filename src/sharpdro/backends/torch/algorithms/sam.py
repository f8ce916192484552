"""Sharpness-aware minimisation (Foret et al. 2021) and ASAM (Kwon et al. 2021)."""
from __future__ import annotations

from sharpdro.backends.torch.algorithms.base import Algorithm, bn_second_pass, register_step


@register_step("sam")
class SAM(Algorithm):
    """Sharpness-aware minimisation (Foret et al. 2021); ASAM with ``adaptive``.

    Ascent on the batch mean loss to w + eps, gradient of the batch mean loss at
    w + eps, restore w, optimizer step with that gradient.  BatchNorm running
    statistics in the second pass follow ``bn_second_pass``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = float(self.hparams["rho"])
        self.adaptive = bool(self.hparams["adaptive"])
        self.bn_policy = self.hparams["bn_second_pass"]

    def update(self, x, y, groups, idx):
        opt = self._begin_step()
        with self._first_pass():
            logits, per = self._forward(x, y)
            self._backward(per.mean())
        params, saved = self._perturb(self.rho, self.adaptive)
        with bn_second_pass(self.model, self.bn_policy):
            _, per_adv = self._forward(x, y)
            self._second_backward(per_adv.mean(), params, keep_first=False)
        self._finish_step(opt, params, saved)
        return self._stats(logits, per, y)
