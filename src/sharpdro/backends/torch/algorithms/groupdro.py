"""GroupDRO (Sagawa et al. 2020) over the groups (the severities in the tool's own pipeline)."""
from __future__ import annotations

from typing import Callable

import torch

from sharpdro.backends.torch.algorithms.base import GroupWeighted, register_step


@register_step("groupdro")
class GroupDRO(GroupWeighted):
    """q <- q exp(eta L_g) / Z from the batch's detached group losses, then minimise sum_g q_g L_g.

    ``L_g`` is the mean loss of group g in the batch (0 for a group absent from the
    batch; its q then follows ``q_absent``).  ``gen_adjustment`` C adds C / sqrt(n_g) to L_g in the q update (n_g:
    training count of group g, see :class:`GroupWeighted`).  The objective is
    :meth:`~GroupWeighted.group_dro_loss`, which ``sharpdro.torch.GroupDROLoss`` is.
    """

    def update(self, x, y, groups, idx):
        logits, per, q = self.step_with(lambda: self._forward(x, y), groups)
        return self._stats(logits, per, y, q=q.clone())

    def step_with(self, forward: Callable[[], tuple], groups: torch.Tensor) -> tuple:
        """One step whose forward is ``forward() -> (output, per-sample losses [B])``; returns
        ``(output, per-sample losses, q)``."""
        self.check_ready(groups)
        opt = self._begin_step()
        out, per = forward()
        loss, q = self.group_dro_loss(per, groups)
        self._backward(loss)
        self._finish_step(opt)
        return out, per, q
