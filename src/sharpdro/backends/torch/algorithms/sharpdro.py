"""SharpDRO (Huang et al., CVPR 2023), distribution-aware: group DRO on the sharpness of each severity group."""
from __future__ import annotations

from typing import Callable

import torch

from sharpdro.errors import ConfigError
from sharpdro.backends.torch.algorithms.base import GroupWeighted, bn_second_pass, register_step
from sharpdro.backends.torch.algorithms.sampling import SampledSecondPass


@register_step("sharpdro")
class SharpDRO(SampledSecondPass, GroupWeighted):
    """One step, official semantics by default (``perturb_on='batch'``, ``add_back_first_grad``):

    1. first pass at w: per-sample losses l_i(w); backward of their mean; SAM/ASAM
       ascent w <- w + eps from that gradient;
    2. q <- q exp(eta L_g(w)) / Z from the detached first-pass group means;
    3. second pass at w + eps: loss = sum_g q_g mean_{i in g}(l_i(w+eps) - l_i(w))
       (l_i(w) detached, so its gradient is sum_g q_g grad L_g(w+eps)); backward;
    4. restore w; with ``add_back_first_grad`` the first-pass gradient stays in
       ``.grad`` and is summed with the second (the official ``old_g`` add-back);
       optimizer step.

    ``perturb_on='worst'`` (the paper's reading): q is updated first and the ascent
    follows the gradient of the q-weighted group loss sum_g q_g L_g(w); with the
    add-back it is that gradient which is added to the second.
    BatchNorm running statistics in the second pass follow ``bn_second_pass``.

    ``second_pass_fraction`` f < 1: the second pass runs on ceil(f B) samples drawn with
    probabilities proportional to a_i = q_g(i) / n_g(i) (n_g the global batch's group count),
    the unbiased estimate of step 3's gradient (see :mod:`.sampling`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = float(self.hparams["rho"])
        self.adaptive = bool(self.hparams["adaptive"])
        self.bn_policy = self.hparams["bn_second_pass"]
        self.perturb_on = self.hparams["perturb_on"]
        self.add_back = bool(self.hparams["add_back_first_grad"])
        self._init_sampler()

    def update(self, x, y, groups, idx):
        logits, per, q = self.step_with(lambda: self._forward(x, y), groups, batch=(x, y))
        return self._stats(logits, per, y, q=q.clone())

    def step_with(self, forward: Callable[[], tuple], groups: torch.Tensor, batch: tuple | None = None) -> tuple:
        """One step whose forward is ``forward() -> (output, per-sample losses [B])``, called once per pass
        (``sharpdro.torch.SharpDRO.step`` passes the user's closure); returns ``(output of the first pass,
        its per-sample losses, q)``.  ``batch`` ``(x, y)``: what a sampled second pass indexes (needed
        only with ``second_pass_fraction`` < 1)."""
        self.check_ready(groups)
        if self.sampled and batch is None:
            raise ConfigError("second_pass_fraction < 1 needs the batch (x, y) to draw the second pass from; "
                              "a closure step runs the exact second pass: leave second_pass_fraction at 1")
        opt = self._begin_step()
        with self._first_pass(), self._capture_first_pass():
            out, per = forward()
            group_loss, counts = self._group_mean(per, groups)  # global batch when data-parallel: same q everywhere
            if self.perturb_on == "batch":
                self._backward(per.mean())
                q = self.update_q(group_loss.detach(), counts)
            else:
                q = self.update_q(group_loss.detach(), counts)
                self._backward((q * group_loss).sum())
        params, saved = self._perturb(self.rho, self.adaptive)
        if self.sampled:  # a_i = q_g(i) / n_g(i): the weight of sample i in the sharpness
            x, y = batch
            self._sampled_second_pass(x, y, per, (q / counts.clamp(min=1.0)).index_select(0, groups), params,
                                      self.add_back)
            self._finish_step(opt, params, saved)
            return out, per, q
        with bn_second_pass(self.model, self.bn_policy):
            _, per_adv = forward()
            # only the sharpness's gradient is used: data-parallel, its value is never all-reduced
            sharpness = self._group_mean_grad(per_adv - per.detach(), groups, counts)
            self._second_backward((q * sharpness).sum(), params, keep_first=self.add_back)
        self._finish_step(opt, params, saved)
        return out, per, q
