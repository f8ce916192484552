"""Empirical risk minimisation: the plain baseline."""
from __future__ import annotations

from sharpdro.backends.torch.algorithms.base import Algorithm, per_sample_losses


class ERM(Algorithm):
    """Mean cross-entropy, one optimizer step."""

    name = "erm"

    def update(self, x, y, g, idx):
        opt = self._opt()
        opt.zero_grad(set_to_none=True)
        logits, per = per_sample_losses(self.model, x, y, self.amp)
        per.mean().backward()
        opt.step()
        return self._stats(logits, per, y)
