"""Empirical risk minimisation: the plain baseline."""
from __future__ import annotations

from sharpdro.backends.torch.algorithms.base import Algorithm, register_step


@register_step("erm")
class ERM(Algorithm):
    """Mean cross-entropy, one optimizer step."""

    def update(self, x, y, groups, idx):
        opt = self._begin_step()
        logits, per_sample_loss = self._forward(x, y)
        self._backward(per_sample_loss.mean())
        self._finish_step(opt)
        return self._stats(logits, per_sample_loss, y)
