"""GroupDRO (Sagawa et al. 2020) over the severity groups."""
from __future__ import annotations

from sharpdro.backends.torch.algorithms.base import GroupWeighted, register_step


@register_step("groupdro")
class GroupDRO(GroupWeighted):
    """q <- q exp(eta L_g) / Z from the batch's detached group losses, then minimise sum_g q_g L_g.

    ``L_g`` is the mean loss of group g in the batch (0 for a group absent from the
    batch; its q then follows ``q_absent``).  ``gen_adjustment`` C adds C / sqrt(n_g) to L_g in the q update (n_g:
    training count of group g, see :class:`GroupWeighted`).
    """

    def update(self, x, y, groups, idx):
        self.check_ready()
        opt = self._begin_step()
        logits, per = self._forward(x, y)
        group_loss, counts = self._group_mean(per, groups)  # of the global batch when data-parallel
        q = self.update_q(group_loss.detach(), counts)
        self._backward((q * group_loss).sum())
        self._finish_step(opt)
        return self._stats(logits, per, y, q=q.clone())
