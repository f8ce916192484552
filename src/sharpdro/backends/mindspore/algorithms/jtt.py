"""Just Train Twice (Liu et al. 2021)."""
from __future__ import annotations

import numpy as np
import mindspore as ms

from sharpdro.backends.mindspore.algorithms.base import (Algorithm, PrepareContext, collect_logits,
                                                         per_sample_losses, register_step, train_reference_erm)
from sharpdro.data.batches import SamplingPlan
from sharpdro.errors import ConfigError
from sharpdro.methods import jtt as spec


@register_step("jtt")
class JTT(Algorithm):
    """Pre-stage: ERM for ``jtt_epochs`` epochs at the constant ``jtt_lr``; the error set is what it
    misclassifies.  Training: ``jtt_mode`` upsample (epochs of N + lambda |E| samples, plain mean loss) or
    reweight (sum_i w_i l_i / sum_i w_i), as the PyTorch ``JTT``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.train_size < 1:
            raise ConfigError("jtt needs train_size (one weight per training point)")
        self.epochs = int(self.hparams["jtt_epochs"])
        self.lambda_up = float(self.hparams["jtt_lambda_up"])
        self.mode = self.hparams["jtt_mode"]
        self.id_lr = self.hparams["jtt_lr"]
        self.buffers["error_set"] = np.zeros(self.train_size, dtype=np.bool_)
        self.buffers["weights"] = np.ones(self.train_size, dtype=np.float32)

    def set_error_set(self, errors) -> None:
        errors = np.asarray(errors).astype(np.bool_)
        self.buffers["error_set"] = errors.copy()
        self.buffers["weights"] = spec.loss_weights(errors, self.lambda_up, self.mode)

    apply_prestage = set_error_set

    def prepare(self, ctx: PrepareContext) -> None:
        if ctx.train_size != self.train_size:
            raise ConfigError(f"jtt was built for {self.train_size} training points, the pre-stage has "
                              f"{ctx.train_size}")
        lr = self.id_lr if self.id_lr is not None else (ctx.base_lr if ctx.base_lr is not None else ctx.lr_at(0))
        report: dict = {}
        reference = train_reference_erm(ctx, self.epochs, "JTT identification ERM", lr=float(lr), report=report)
        logits, labels = collect_logits(reference, ctx, "JTT error set")
        if bool((labels < 0).any()):
            raise ConfigError("ordered_batches() did not cover every training index")
        self.set_error_set(logits.argmax(1) != labels)  # misclassified
        self.mark_prepared()
        errors = self.buffers["error_set"].copy()
        self.prestage_info = spec.prestage_summary(errors, report, self.mode, self.lambda_up)

    def sampling_plan(self) -> SamplingPlan:
        if self.mode != "upsample" or not self.prepared:
            return SamplingPlan()
        return SamplingPlan(indices=spec.upsampled_indices(self.buffers["error_set"], self.lambda_up))

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
