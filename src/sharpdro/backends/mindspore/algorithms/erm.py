"""Empirical risk minimisation: the plain baseline."""
from __future__ import annotations

from sharpdro.backends.mindspore.algorithms.base import Algorithm


class ERM(Algorithm):
    """Mean cross-entropy, one optimizer step."""

    name = "erm"

    def update(self, x, y, g, idx):
        (_, (logits, per)), grads = self._erm_grad()(x, y)
        self._opt()(grads)
        return self._stats(logits, per, y)
