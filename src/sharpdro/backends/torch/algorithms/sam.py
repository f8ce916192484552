"""Sharpness-aware minimisation (Foret et al. 2021) and ASAM (Kwon et al. 2021)."""
from __future__ import annotations

import torch

from sharpdro.backends.torch.algorithms.base import Algorithm, bn_second_pass, register_step
from sharpdro.backends.torch.algorithms.sampling import SampledSecondPass


@register_step("sam")
class SAM(SampledSecondPass, Algorithm):
    """Sharpness-aware minimisation (Foret et al. 2021); ASAM with ``adaptive``.

    Ascent on the batch mean loss to w + eps, gradient of the batch mean loss at
    w + eps, restore w, optimizer step with that gradient.  BatchNorm running
    statistics in the second pass follow ``bn_second_pass``.  ``second_pass_fraction`` f < 1:
    the second pass runs on ceil(f B) samples drawn uniformly (see :mod:`.sampling`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = float(self.hparams["rho"])
        self.adaptive = bool(self.hparams["adaptive"])
        self.bn_policy = self.hparams["bn_second_pass"]
        self._init_sampler()

    def update(self, x, y, groups, idx):
        opt = self._begin_step()
        with self._first_pass(), self._capture_first_pass():
            logits, per = self._forward(x, y)
            self._backward(per.mean())
        params, saved = self._perturb(self.rho, self.adaptive)
        if self.sampled:  # a_i = 1 / (global batch)
            self._sampled_second_pass(x, y, per, torch.full_like(per, 1.0 / (per.numel() * self.world_size)),
                                      params, False)
            self._finish_step(opt, params, saved)
            return self._stats(logits, per, y)
        with bn_second_pass(self.model, self.bn_policy):
            _, per_adv = self._forward(x, y)
            self._second_backward(per_adv.mean(), params, keep_first=False)
        self._finish_step(opt, params, saved)
        return self._stats(logits, per, y)
