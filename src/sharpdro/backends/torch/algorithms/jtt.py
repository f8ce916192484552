"""Just Train Twice (Liu et al. 2021)."""
from __future__ import annotations

import torch

from sharpdro.backends.torch.algorithms.base import (Algorithm, PrepareContext, collect_logits, register_step,
                                                     train_reference_erm)
from sharpdro.errors import ConfigError
from sharpdro.methods.jtt import error_weights


@register_step("jtt")
class JTT(Algorithm):
    """Pre-stage: ERM for ``jtt_epochs`` epochs; the error set is the training points it misclassifies.

    Training: from the trainer's fresh model, cross-entropy with per-sample weights
    ``lambda_up`` (error set) or 1, normalised by the sum of the batch's weights:
    sum_i w_i l_i / sum_i w_i.  This is the loss of a batch drawn from the upsampled
    training set (the original JTT repeats the error set in the data), so the
    gradient scale and learning rate stay those of ERM.
    Buffers: ``error_set`` bool [N], ``weights`` [N].  ``selected`` = error-set membership.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.train_size < 1:
            raise ConfigError("jtt needs train_size (one weight per training point)")
        self.epochs = int(self.hparams["jtt_epochs"])
        self.lambda_up = float(self.hparams["jtt_lambda_up"])
        self._new_buffer("error_set", torch.zeros(self.train_size, dtype=torch.bool))
        self._new_buffer("weights", torch.ones(self.train_size, dtype=self._dtype))

    def set_error_set(self, errors: torch.Tensor) -> None:
        errors = torch.as_tensor(errors).to(torch.bool)
        self.error_set.copy_(errors.to(self.error_set.device))
        weights = torch.from_numpy(error_weights(errors.cpu().numpy(), self.lambda_up))
        self.weights.copy_(weights.to(self.weights.device, self.weights.dtype))

    apply_prestage = set_error_set

    def prepare(self, ctx: PrepareContext) -> None:
        if ctx.train_size != self.train_size:
            raise ConfigError(f"jtt was built for {self.train_size} training points, the pre-stage has "
                              f"{ctx.train_size}")
        reference = train_reference_erm(ctx, self.epochs, "JTT reference ERM", self.precision)
        logits, labels = collect_logits(reference, ctx, "JTT error set", self.precision)
        if bool((labels < 0).any()):
            raise ConfigError("ordered_batches() did not cover every training index")
        self.set_error_set(logits.argmax(1).ne(labels))  # misclassified (ne, not eq)
        self.mark_prepared()

    def update(self, x, y, groups, idx):
        opt = self._begin_step()
        logits, per_sample_loss = self._forward(x, y)
        self._backward(self._weighted_mean(per_sample_loss, self.weights[idx].to(per_sample_loss.dtype)))
        self._finish_step(opt)
        return self._stats(logits, per_sample_loss, y, selected=self.error_set[idx])
