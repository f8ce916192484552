"""Empirical risk minimisation: the plain baseline."""
from __future__ import annotations

from sharpdro.backends.mindspore.algorithms.base import Algorithm, register_step


@register_step("erm")
class ERM(Algorithm):
    """Mean cross-entropy, one optimizer step."""

    def update(self, x, y, groups, idx):
        (_, (logits, per)), grads = self._erm_grad()(x, y)
        self._opt()(grads)
        return self._stats(logits, per, y)
