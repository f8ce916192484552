"""Empirical risk minimisation: the plain baseline."""
from __future__ import annotations

from sharpdro.backends.torch.algorithms.base import Algorithm


class ERM(Algorithm):
    """Mean cross-entropy, one optimizer step."""

    name = "erm"

    def update(self, x, y, g, idx):
        opt = self._begin_step()
        logits, per = self._forward(x, y)
        self._backward(per.mean())
        self._finish_step(opt)
        return self._stats(logits, per, y)
