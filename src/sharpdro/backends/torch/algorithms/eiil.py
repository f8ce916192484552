"""Environment Inference for Invariant Learning (Creager et al. 2021), with GroupDRO or SharpDRO on top.

The environment inference itself is framework-neutral (:mod:`sharpdro.methods.eiil`);
the functions here take and give tensors.
"""
from __future__ import annotations

import torch

from sharpdro.backends.torch.algorithms.base import (STEPS, Algorithm, PrepareContext, collect_logits,
                                                     register_step, train_reference_erm)
from sharpdro.backends.torch.algorithms.groupdro import GroupDRO  # noqa: F401  (registers the robust steps)
from sharpdro.backends.torch.algorithms.sharpdro import SharpDRO  # noqa: F401
from sharpdro.data.batches import SamplingPlan
from sharpdro.errors import ConfigError
from sharpdro.methods import eiil as spec


def irm_scale_grads(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d_i = d/ds CE(s * z_i, y_i) at s = 1, for every sample."""
    d = spec.irm_scale_grads(logits.detach().cpu().numpy(), labels.cpu().numpy())
    return torch.from_numpy(d).to(logits.device)


def irm_penalty(d: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_e (dR_e/ds at s=1)^2 (see :func:`sharpdro.methods.eiil.irm_penalty`)."""
    return torch.as_tensor(spec.irm_penalty(d.detach().cpu().numpy(), q.detach().cpu().numpy()), device=d.device)


def run_inference(logits: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
                  generator: torch.Generator | None = None, tol: float = 1e-4, stop: bool = True) -> spec.Inference:
    """:func:`sharpdro.methods.eiil.run_inference` from ``a_i ~ N(0, 1)`` drawn by ``torch.randn(generator)``."""
    z = logits.detach().cpu().numpy()
    init = torch.randn(z.shape[0], generator=generator, dtype=logits.dtype).numpy()
    return spec.run_inference(z, labels.cpu().numpy(), steps, lr, init=init, tol=tol, stop=stop)


def infer_environments(logits: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
                       generator: torch.Generator | None = None, tol: float = 1e-4,
                       stop: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(env ids int64 [N], penalty of the hard split) of :func:`run_inference`, on the logits' device."""
    r = run_inference(logits, labels, steps, lr, generator, tol, stop)
    return (torch.from_numpy(r.env).to(logits.device),
            torch.tensor(r.penalty, dtype=logits.dtype, device=logits.device))


@register_step("eiil")
class EIIL(Algorithm):
    """Pre-stage: ERM reference model (``eiil_epochs``, null: train.epochs; the epoch of lowest
    validation loss with ``eiil_reference='val_loss'``), its logits on every training point, two
    environments inferred by :func:`run_inference` (at most ``eiil_steps`` Adam steps at
    ``eiil_lr``, the stopping rule ``eiil_tol``), stored in the buffer ``env`` [N].

    Training: the robust learner ``eiil_robust`` (a GroupDRO or SharpDRO step over 2
    groups, held as ``self.robust`` and sharing the model) is stepped with the inferred
    environments ``env[idx]`` in place of severities, so severities are never used
    (``data.sampler=group_balanced`` balances the environments).
    ``selected`` = membership of environment 1 (the harder one).
    """

    def __init__(self, model, num_classes, num_groups, hparams=None, train_size=0, **kwargs):
        super().__init__(model, num_classes, num_groups, hparams, train_size, **kwargs)
        if self.train_size < 1:
            raise ConfigError("eiil needs train_size (one environment id per training point)")
        robust_cls = STEPS[self.hparams["eiil_robust"]]
        self.robust = robust_cls(model, num_classes, 2, self.hparams, train_size, register_model=False)
        self.epochs = self.hparams["eiil_epochs"]
        self.reference = self.hparams["eiil_reference"]
        self.steps = int(self.hparams["eiil_steps"])
        self.lr = float(self.hparams["eiil_lr"])
        self.tol = float(self.hparams["eiil_tol"])
        self.early_stop = bool(self.hparams["eiil_early_stop"])
        self._new_buffer("env", torch.zeros(self.train_size, dtype=torch.long))

    def configure(self, optimizer, amp=None, replicas=None):
        super().configure(optimizer, amp, replicas)
        self.robust.configure(optimizer, self.precision, replicas)

    def set_environments(self, env: torch.Tensor) -> None:
        env = torch.as_tensor(env).to(self.env.device, torch.long)
        self.env.copy_(env)
        if self.robust.gen_adjustment > 0:
            self.robust.set_group_counts(torch.bincount(env, minlength=2))
        self.robust.mark_prepared()

    apply_prestage = set_environments

    def prepare(self, ctx: PrepareContext) -> None:
        if ctx.train_size != self.train_size:
            raise ConfigError(f"eiil was built for {self.train_size} training points, the pre-stage has "
                              f"{ctx.train_size}")
        epochs = int(self.epochs) if self.epochs is not None else int(ctx.run_epochs)
        report: dict = {}
        reference = train_reference_erm(ctx, epochs, "EIIL reference ERM", self.precision, select=self.reference,
                                        report=report)
        logits, labels = collect_logits(reference, ctx, "EIIL reference logits", self.precision)
        if bool((labels < 0).any()):
            raise ConfigError("ordered_batches() did not cover every training index")
        del reference
        result = run_inference(logits.float(), labels, self.steps, self.lr, tol=self.tol, stop=self.early_stop)
        self.set_environments(torch.from_numpy(result.env))
        self.mark_prepared()
        self.prestage_info = {**result.summary(), "max_steps": self.steps, "lr": self.lr, "tol": self.tol,
                              "reference": report, "members": result.env == 1}

    def sampling_plan(self) -> SamplingPlan:
        return SamplingPlan(groups=self.env.cpu().numpy())

    def update(self, x, y, groups, idx):
        e = self.env[idx]
        stats = self.robust.update(x, y, e, idx)
        stats["selected"] = e == 1
        return stats
