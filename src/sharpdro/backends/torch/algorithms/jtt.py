"""Just Train Twice (Liu et al. 2021)."""
from __future__ import annotations

import torch

from sharpdro.backends.torch.algorithms.base import (Algorithm, PrepareContext, collect_logits, register_step,
                                                     train_reference_erm)
from sharpdro.data.batches import SamplingPlan
from sharpdro.errors import ConfigError
from sharpdro.methods import jtt as spec


@register_step("jtt")
class JTT(Algorithm):
    """Pre-stage: ERM for ``jtt_epochs`` epochs at the constant learning rate ``jtt_lr`` (null: train.lr);
    the error set is the training points it misclassifies (eval mode, no augmentation).

    Training, from the trainer's fresh model (``jtt_mode``, see :mod:`sharpdro.methods.jtt`):
    ``upsample`` asks the trainer for epochs of N + lambda |E| samples
    (:meth:`sampling_plan`) and minimises the plain mean loss; ``reweight`` keeps the
    N-point epochs and minimises sum_i w_i l_i / sum_i w_i with w = lambda on E.
    Buffers: ``error_set`` bool [N], ``weights`` [N] (the loss weights: ones when upsampling).
    ``selected`` = error-set membership.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.train_size < 1:
            raise ConfigError("jtt needs train_size (one weight per training point)")
        self.epochs = int(self.hparams["jtt_epochs"])
        self.lambda_up = float(self.hparams["jtt_lambda_up"])
        self.mode = self.hparams["jtt_mode"]
        self.id_lr = self.hparams["jtt_lr"]
        self._new_buffer("error_set", torch.zeros(self.train_size, dtype=torch.bool))
        self._new_buffer("weights", torch.ones(self.train_size, dtype=self._dtype))

    def set_error_set(self, errors: torch.Tensor) -> None:
        errors = torch.as_tensor(errors).to(torch.bool)
        self.error_set.copy_(errors.to(self.error_set.device))
        weights = torch.from_numpy(spec.loss_weights(errors.cpu().numpy(), self.lambda_up, self.mode))
        self.weights.copy_(weights.to(self.weights.device, self.weights.dtype))

    apply_prestage = set_error_set

    def prepare(self, ctx: PrepareContext) -> None:
        if ctx.train_size != self.train_size:
            raise ConfigError(f"jtt was built for {self.train_size} training points, the pre-stage has "
                              f"{ctx.train_size}")
        lr = self.id_lr if self.id_lr is not None else (ctx.base_lr if ctx.base_lr is not None else ctx.lr_at(0))
        report: dict = {}
        reference = train_reference_erm(ctx, self.epochs, "JTT identification ERM", self.precision, lr=float(lr),
                                        report=report)
        logits, labels = collect_logits(reference, ctx, "JTT error set", self.precision)
        if bool((labels < 0).any()):
            raise ConfigError("ordered_batches() did not cover every training index")
        self.set_error_set(logits.argmax(1).ne(labels))  # misclassified (ne, not eq)
        self.mark_prepared()
        errors = self.error_set.cpu().numpy()
        self.prestage_info = spec.prestage_summary(errors, report, self.mode, self.lambda_up)

    def sampling_plan(self) -> SamplingPlan:
        if self.mode != "upsample" or not self.prepared:
            return SamplingPlan()
        return SamplingPlan(indices=spec.upsampled_indices(self.error_set.cpu().numpy(), self.lambda_up))

    def update(self, x, y, groups, idx):
        opt = self._begin_step()
        logits, per_sample_loss = self._forward(x, y)
        # upsample: the weights are ones (a plain mean); reweight: lambda on the error set
        self._backward(self._weighted_mean(per_sample_loss, self.weights[idx].to(per_sample_loss.dtype)))
        self._finish_step(opt)
        return self._stats(logits, per_sample_loss, y, selected=self.error_set[idx])
