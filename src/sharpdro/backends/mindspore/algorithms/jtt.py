"""Just Train Twice (Liu et al. 2021)."""
from __future__ import annotations

import numpy as np
import mindspore as ms

from sharpdro.backends.mindspore.algorithms.base import (Algorithm, PrepareContext, collect_logits,
                                                         per_sample_losses, register_step, train_reference_erm)
from sharpdro.errors import ConfigError
from sharpdro.methods.jtt import error_weights


@register_step("jtt")
class JTT(Algorithm):
    """Pre-stage: ERM for ``jtt_epochs`` epochs; the error set is what it misclassifies.  Training: per-sample
    weights ``lambda_up`` (error set) or 1, loss sum_i w_i l_i / sum_i w_i (as the PyTorch ``JTT``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.train_size < 1:
            raise ConfigError("jtt needs train_size (one weight per training point)")
        self.epochs = int(self.hparams["jtt_epochs"])
        self.lambda_up = float(self.hparams["jtt_lambda_up"])
        self.buffers["error_set"] = np.zeros(self.train_size, dtype=np.bool_)
        self.buffers["weights"] = np.ones(self.train_size, dtype=np.float32)

    def set_error_set(self, errors) -> None:
        errors = np.asarray(errors).astype(np.bool_)
        self.buffers["error_set"] = errors.copy()
        self.buffers["weights"] = error_weights(errors, self.lambda_up)

    apply_prestage = set_error_set

    def prepare(self, ctx: PrepareContext) -> None:
        if ctx.train_size != self.train_size:
            raise ConfigError(f"jtt was built for {self.train_size} training points, the pre-stage has "
                              f"{ctx.train_size}")
        reference = train_reference_erm(ctx, self.epochs, "JTT reference ERM")
        logits, labels = collect_logits(reference, ctx, "JTT error set")
        if bool((labels < 0).any()):
            raise ConfigError("ordered_batches() did not cover every training index")
        self.set_error_set(logits.argmax(1) != labels)  # misclassified
        self.mark_prepared()

    def _loss(self):
        model = self.model

        def fn(x, y, w):
            logits, per = per_sample_losses(model, x, y)
            return (w * per).sum() / w.sum(), (logits, per)

        return fn

    def update(self, x, y, groups, idx):
        idx = np.asarray(idx)
        w = ms.Tensor(self.buffers["weights"][idx])
        (_, (logits, per)), grads = self._grad("step", self._loss())(x, y, w)
        self._opt()(grads)
        return self._stats(logits, per, y, selected=self.buffers["error_set"][idx])
