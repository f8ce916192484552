"""SharpDRO (Huang et al., CVPR 2023), distribution-aware: group DRO on the sharpness of each severity group."""
from __future__ import annotations

import numpy as np
from mindspore import ops

from sharpdro.backends.mindspore.algorithms.base import (BNSecondPass, GroupWeighted, add_grads, group_mean,
                                                         per_sample_losses, register_step, restore, sam_perturb)
from sharpdro.backends.mindspore.algorithms.sampling import SampledSecondPass


@register_step("sharpdro")
class SharpDRO(SampledSecondPass, GroupWeighted):
    """The step of the PyTorch ``SharpDRO`` (official semantics by default), written for MindSpore:

    1. first pass at w: per-sample losses, group means; with ``perturb_on='batch'`` the
       gradient of the batch mean loss, with ``'worst'`` of sum_g q'_g L_g(w) where q' is
       the updated q (computed inside the pass, detached); q' <- eg(q, L(w));
    2. ascent w <- w + eps from that gradient;
    3. second pass at w + eps: gradient of sum_g q'_g mean_{i in g}(l_i(w+eps) - l_i(w))
       (l_i(w) detached); BatchNorm statistics follow ``bn_second_pass``;
    4. restore w; step with the second gradient, plus the first with ``add_back_first_grad``.

    ``second_pass_fraction`` < 1: step 3 on ceil(f B) samples drawn with probabilities
    proportional to q'_g(i) / n_g(i) (see :mod:`.sampling`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = float(self.hparams["rho"])
        self.adaptive = bool(self.hparams["adaptive"])
        self.bn_policy = self.hparams["bn_second_pass"]
        self.perturb_on = self.hparams["perturb_on"]
        self.add_back = bool(self.hparams["add_back_first_grad"])
        BNSecondPass(self.model, self.bn_policy)
        self._init_sampler()

    def _first(self):
        model, G, worst = self.model, self.num_groups, self.perturb_on != "batch"

        def fn(x, y, g, q, adjustment):
            logits, per = per_sample_losses(model, x, y)
            group_loss, counts = group_mean(per, g, G)
            q_new = ops.stop_gradient(self.next_q(q, group_loss, adjustment, counts))
            loss = (q_new * group_loss).sum() if worst else per.mean()
            return loss, (logits, per, q_new)

        return fn

    def _second(self):
        model, G = self.model, self.num_groups

        def fn(x, y, g, q, base):
            _, per_adv = per_sample_losses(model, x, y)
            sharpness, _ = group_mean(per_adv - base, g, G)
            return (q * sharpness).sum(), per_adv

        return fn

    def update(self, x, y, groups, idx):
        self.check_ready(groups)
        with self._capture_first_pass():
            (_, (logits, per, q)), grads1 = self._grad("first", self._first())(
                x, y, groups, self.q_tensor(), self.adjustment_tensor())
        params = self._params()
        saved = sam_perturb(params, grads1, self.rho, self.adaptive)
        if self.sampled:  # a_i = q'_g(i) / n_g(i), float32 as in PyTorch
            g_np = groups.asnumpy().astype(np.int64)
            counts = np.bincount(g_np, minlength=self.num_groups)[: self.num_groups].astype(np.float32)
            weights = (q.asnumpy().astype(np.float32) / np.maximum(counts, np.float32(1.0)))[g_np]
            grads2 = self._sampled_grads(x, y, per, weights)
        else:
            with BNSecondPass(self.model, self.bn_policy):
                _, grads2 = self._grad("second", self._second())(x, y, groups, q, ops.stop_gradient(per))
        restore(params, saved)
        self._opt()(add_grads(grads1, grads2) if self.add_back else grads2)
        q_np = self.store_q(q)
        return self._stats(logits, per, y, q=q_np.copy())
