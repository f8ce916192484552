"""SharpDRO (Huang et al., CVPR 2023), distribution-aware: group DRO on the sharpness of each severity group."""
from __future__ import annotations

from sharpdro.backends.torch.algorithms.base import (GroupWeighted, bn_second_pass, group_mean, params_with_grad,
                                                     per_sample_losses, restore_, sam_perturb_)


class SharpDRO(GroupWeighted):
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
    """

    name = "sharpdro"
    uses_groups = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = float(self.hparams["rho"])
        self.adaptive = bool(self.hparams["adaptive"])
        self.bn_policy = self.hparams["bn_second_pass"]
        self.perturb_on = self.hparams["perturb_on"]
        self.add_back = bool(self.hparams["add_back_first_grad"])

    def update(self, x, y, g, idx):
        self.check_ready()
        opt, G = self._opt(), self.num_groups
        opt.zero_grad(set_to_none=True)
        logits, per = per_sample_losses(self.model, x, y, self.amp)
        group_loss, _ = group_mean(per, g, G)
        if self.perturb_on == "batch":
            per.mean().backward()
            q = self.update_q(group_loss.detach())
        else:
            q = self.update_q(group_loss.detach())
            (q * group_loss).sum().backward()
        params = params_with_grad(self.model)
        saved = sam_perturb_(params, self.rho, self.adaptive)
        if not self.add_back:
            opt.zero_grad(set_to_none=True)
        with bn_second_pass(self.model, self.bn_policy):
            _, per_adv = per_sample_losses(self.model, x, y, self.amp)
            sharpness, _ = group_mean(per_adv - per.detach(), g, G)
            (q * sharpness).sum().backward()
        restore_(params, saved)
        opt.step()
        return self._stats(logits, per, y, q=q.clone())
