"""Just Train Twice (Liu et al. 2021)."""
from __future__ import annotations

import torch

from sharpdro.backends.torch.algorithms.base import Algorithm, PrepareContext, collect_logits, train_reference_erm
from sharpdro.config import ConfigError


class JTT(Algorithm):
    """Pre-stage: ERM for ``jtt_epochs`` epochs; the error set is the training points it misclassifies.

    Training: from the trainer's fresh model, cross-entropy with per-sample weights
    ``lambda_up`` (error set) or 1, normalised by the sum of the batch's weights:
    sum_i w_i l_i / sum_i w_i.  This is the loss of a batch drawn from the upsampled
    training set (the original JTT repeats the error set in the data), so the
    gradient scale and learning rate stay those of ERM.
    Buffers: ``error_set`` bool [N], ``weights`` [N].  ``selected`` = error-set membership.
    """

    name = "jtt"
    uses_groups = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.train_size < 1:
            raise ConfigError("jtt needs train_size (one weight per training point)")
        self.epochs = int(self.hparams["jtt_epochs"])
        self.lambda_up = float(self.hparams["jtt_lambda_up"])
        self._new_buffer("error_set", torch.zeros(self.train_size, dtype=torch.bool))
        self._new_buffer("weights", torch.ones(self.train_size, dtype=self._dtype))

    def set_error_set(self, errors: torch.Tensor) -> None:
        errors = errors.to(self.error_set.device, torch.bool)
        self.error_set.copy_(errors)
        self.weights.copy_(torch.where(errors, self.lambda_up, 1.0).to(self.weights.dtype))

    def prepare(self, ctx: PrepareContext) -> None:
        if ctx.train_size != self.train_size:
            raise ConfigError(f"jtt was built for {self.train_size} training points, the pre-stage has "
                              f"{ctx.train_size}")
        reference = train_reference_erm(ctx, self.epochs, "JTT reference ERM", self.amp)
        logits, labels = collect_logits(reference, ctx, "JTT error set", self.amp)
        if bool((labels < 0).any()):
            raise ConfigError("ordered_batches() did not cover every training index")
        self.set_error_set(logits.argmax(1).ne(labels))  # misclassified (ne, not eq)
        self.mark_prepared()

    def update(self, x, y, g, idx):
        opt = self._begin_step()
        logits, per = self._forward(x, y)
        w = self.weights[idx].to(per.dtype)
        if self.replicas is None:
            self._backward((w * per).sum() / w.sum())
        else:  # normalised by the global batch's weight sum; x W because DDP averages the replicas
            self._backward((w * per).sum() * (self.world_size / self._global_sum(w.sum())))
        self._finish_step(opt)
        return self._stats(logits, per, y, selected=self.error_set[idx])
