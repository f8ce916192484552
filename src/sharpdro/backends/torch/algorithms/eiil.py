"""Environment Inference for Invariant Learning (Creager et al. 2021), with GroupDRO or SharpDRO on top."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sharpdro.backends.torch.algorithms.base import (Algorithm, PrepareContext, collect_logits,
                                                     train_reference_erm)
from sharpdro.backends.torch.algorithms.groupdro import GroupDRO
from sharpdro.backends.torch.algorithms.sharpdro import SharpDRO
from sharpdro.config import ConfigError


def irm_scale_grads(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d_i = d/ds CE(s * z_i, y_i) at s = 1, for every sample (one autograd call, scales as a vector)."""
    logits = logits.detach()
    s = torch.ones(logits.shape[0], dtype=logits.dtype, device=logits.device, requires_grad=True)
    loss = F.cross_entropy(logits * s.unsqueeze(1), labels, reduction="sum")
    (d,) = torch.autograd.grad(loss, s)
    return d


def irm_penalty(d: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_e (dR_e/ds at s=1)^2 with R_1 = mean_i q_i l_i(s z_i), R_0 = mean_i (1 - q_i) l_i(s z_i).

    The environment risks are averaged over all N points (as the EIIL reference
    implementation), so dR_1/ds = mean(q d) and dR_0/ds = mean((1 - q) d).
    """
    return (q * d).mean().pow(2) + ((1 - q) * d).mean().pow(2)


def infer_environments(logits: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two environments that MAXIMISE the IRM penalty of a fixed reference model.

    Soft assignments q_i = sigmoid(a_i), a_i ~ N(0, 1) (q = 1/2 everywhere is a
    stationary point), Adam on -penalty for ``steps`` steps, threshold at 1/2.
    Environment 1 is labelled the one with the higher mean reference loss.
    Returns (env ids int64 [N], penalty of the hard split).
    """
    d = irm_scale_grads(logits, labels)
    a = torch.randn(d.shape[0], generator=generator, dtype=d.dtype).to(d.device).requires_grad_(True)
    opt = torch.optim.Adam([a], lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        (-irm_penalty(d, torch.sigmoid(a))).backward()
        opt.step()
    env = (torch.sigmoid(a.detach()) > 0.5).long()
    loss = F.cross_entropy(logits.detach(), labels, reduction="none")
    mean1 = (loss * env).sum() / env.sum().clamp(min=1)
    mean0 = (loss * (1 - env)).sum() / (1 - env).sum().clamp(min=1)
    if bool(mean1 < mean0):
        env = 1 - env
    return env, irm_penalty(d, env.to(d.dtype))


class EIIL(Algorithm):
    """Pre-stage: ERM reference model (``eiil_epochs``), its logits on every training point,
    two environments inferred by :func:`infer_environments` (``eiil_steps``, ``eiil_lr``),
    stored in the buffer ``env`` [N].

    Training: the robust learner ``eiil_robust`` (a :class:`GroupDRO` or
    :class:`SharpDRO` over 2 groups, held as ``self.robust`` and sharing the model)
    is stepped with the inferred environments ``env[idx]`` in place of severities,
    so severities are never used.  ``selected`` = membership of environment 1 (the
    harder one).
    """

    name = "eiil"
    uses_groups = False

    def __init__(self, model, num_classes, num_groups, hparams=None, train_size=0, **kwargs):
        super().__init__(model, num_classes, num_groups, hparams, train_size, **kwargs)
        if self.train_size < 1:
            raise ConfigError("eiil needs train_size (one environment id per training point)")
        robust_cls = {"groupdro": GroupDRO, "sharpdro": SharpDRO}[self.hparams["eiil_robust"]]
        self.robust = robust_cls(model, num_classes, 2, self.hparams, train_size, register_model=False)
        self.epochs = int(self.hparams["eiil_epochs"])
        self.steps = int(self.hparams["eiil_steps"])
        self.lr = float(self.hparams["eiil_lr"])
        self._new_buffer("env", torch.zeros(self.train_size, dtype=torch.long))

    def configure(self, optimizer, amp=None, replicas=None):
        super().configure(optimizer, amp, replicas)
        self.robust.configure(optimizer, self.precision, replicas)

    def set_environments(self, env: torch.Tensor) -> None:
        env = env.to(self.env.device, torch.long)
        self.env.copy_(env)
        if self.robust.gen_adjustment > 0:
            self.robust.set_group_counts(torch.bincount(env, minlength=2))
        self.robust.mark_prepared()

    def prepare(self, ctx: PrepareContext) -> None:
        if ctx.train_size != self.train_size:
            raise ConfigError(f"eiil was built for {self.train_size} training points, the pre-stage has "
                              f"{ctx.train_size}")
        reference = train_reference_erm(ctx, self.epochs, "EIIL reference ERM", self.amp)
        logits, labels = collect_logits(reference, ctx, "EIIL reference logits", self.amp)
        if bool((labels < 0).any()):
            raise ConfigError("ordered_batches() did not cover every training index")
        del reference
        with torch.enable_grad():
            env, _ = infer_environments(logits.float(), labels, self.steps, self.lr)
        self.set_environments(env)
        self.mark_prepared()

    def update(self, x, y, g, idx):
        e = self.env[idx]
        stats = self.robust.update(x, y, e, idx)
        stats["selected"] = e == 1
        return stats
