"""GroupDRO (Sagawa et al. 2020) over the severity groups."""
from __future__ import annotations

from mindspore import ops

from sharpdro.backends.mindspore.algorithms.base import GroupWeighted, group_mean, per_sample_losses, register_step


@register_step("groupdro")
class GroupDRO(GroupWeighted):
    """q <- q exp(eta L_g) / Z from the batch's detached group losses, then minimise sum_g q_g L_g.

    The q update sits inside the loss function (``stop_gradient``), so one forward pass
    gives both, as in the PyTorch step.
    """

    def _loss(self):
        model, G = self.model, self.num_groups

        def fn(x, y, g, q, adjustment):
            logits, per = per_sample_losses(model, x, y)
            group_loss, counts = group_mean(per, g, G)
            q_new = ops.stop_gradient(self.next_q(q, group_loss, adjustment, counts))
            return (q_new * group_loss).sum(), (logits, per, q_new)

        return fn

    def update(self, x, y, groups, idx):
        self.check_ready(groups)
        (_, (logits, per, q)), grads = self._grad("step", self._loss())(
            x, y, groups, self.q_tensor(), self.adjustment_tensor())
        self._opt()(grads)
        q_np = self.store_q(q)
        return self._stats(logits, per, y, q=q_np.copy())
