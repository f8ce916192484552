"""Sharpness-aware minimisation (Foret et al. 2021) and ASAM (Kwon et al. 2021)."""
from __future__ import annotations

from typing import Callable

import torch

from sharpdro.errors import ConfigError
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
        logits, per = self.step_with(lambda: self._forward(x, y), batch=(x, y))
        return self._stats(logits, per, y)

    def step_with(self, forward: Callable[[], tuple], batch: tuple | None = None) -> tuple:
        """One step whose forward is ``forward() -> (output, per-sample losses [B])``, called once per pass
        (``sharpdro.torch.SAM.step`` passes the user's closure); returns the first pass's ``(output,
        per-sample losses)``.  ``batch`` ``(x, y)``: needed only with ``second_pass_fraction`` < 1."""
        if self.sampled and batch is None:
            raise ConfigError("second_pass_fraction < 1 needs the batch (x, y) to draw the second pass from; "
                              "a closure step runs the exact second pass: leave second_pass_fraction at 1")
        opt = self._begin_step()
        with self._first_pass(), self._capture_first_pass():
            out, per = forward()
            self._backward(per.mean())
        params, saved = self._perturb(self.rho, self.adaptive)
        if self.sampled:  # a_i = 1 / (global batch)
            x, y = batch
            self._sampled_second_pass(x, y, per, torch.full_like(per, 1.0 / (per.numel() * self.world_size)),
                                      params, False)
            self._finish_step(opt, params, saved)
            return out, per
        with bn_second_pass(self.model, self.bn_policy):
            _, per_adv = forward()
            self._second_backward(per_adv.mean(), params, keep_first=False)
        self._finish_step(opt, params, saved)
        return out, per
