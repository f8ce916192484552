"""Environment Inference for Invariant Learning (Creager et al. 2021), with GroupDRO or SharpDRO on top."""
from __future__ import annotations

from typing import Callable

import numpy as np
import mindspore as ms

from sharpdro.backends.mindspore.algorithms.base import (Algorithm, PrepareContext, collect_logits,
                                                         train_reference_erm)
from sharpdro.backends.mindspore.algorithms.groupdro import GroupDRO
from sharpdro.backends.mindspore.algorithms.sharpdro import SharpDRO
from sharpdro.config import ConfigError


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(1, keepdims=True))


def irm_scale_grads(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """d_i = d/ds CE(s * z_i, y_i) at s = 1 = sum_c softmax(z_i)_c z_ic - z_iy (closed form of the autograd call)."""
    z = np.asarray(logits, dtype=np.float32)
    p = np.exp(_log_softmax(z))
    return ((p * z).sum(1) - z[np.arange(len(z)), np.asarray(labels)]).astype(np.float32)


def irm_penalty(d: np.ndarray, q: np.ndarray) -> float:
    """sum_e (dR_e/ds at s=1)^2 with the environment risks averaged over all N points (see the PyTorch version)."""
    return float(np.mean(q * d) ** 2 + np.mean((1 - q) * d) ** 2)


def infer_environments(logits: np.ndarray, labels: np.ndarray, steps: int, lr: float,
                       init: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, float]:
    """Two environments that MAXIMISE the IRM penalty of a fixed reference model (as the PyTorch function).

    Soft assignments q_i = sigmoid(a_i) from ``init`` (a_i ~ N(0, 1); drawn from
    ``numpy.random.default_rng(seed)`` when None), Adam on -penalty for ``steps`` steps
    (PyTorch's Adam arithmetic, float32, with the closed-form gradient), threshold at 1/2;
    environment 1 is the one with the higher mean reference loss.
    Returns (env ids int64 [N], penalty of the hard split).
    """
    f32 = np.float32
    d = irm_scale_grads(logits, labels)
    n = d.shape[0]
    a = (np.random.default_rng(seed).standard_normal(n) if init is None else np.asarray(init)).astype(f32)
    m, v = np.zeros_like(a), np.zeros_like(a)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        q = (f32(1.0) / (f32(1.0) + np.exp(-a))).astype(f32)
        m1, m0 = (q * d).mean(dtype=f32), ((f32(1.0) - q) * d).mean(dtype=f32)
        # d(-penalty)/dq_i = -(2 m1 d_i - 2 m0 d_i) / N;  dq/da = q (1 - q)
        grad_q = -(f32(2.0) * m1 * d / f32(n)) + f32(2.0) * m0 * d / f32(n)
        grad = (grad_q * (f32(1.0) - q) * q).astype(f32)
        m = (m + f32(1 - b1) * (grad - m)).astype(f32)
        v = (v * f32(b2) + f32(1 - b2) * grad * grad).astype(f32)
        step_size = lr / (1 - b1 ** t)
        denom = (np.sqrt(v) / f32(np.sqrt(1 - b2 ** t)) + f32(eps)).astype(f32)
        a = (a - f32(step_size) * (m / denom)).astype(f32)
    env = ((f32(1.0) / (f32(1.0) + np.exp(-a))) > 0.5).astype(np.int64)
    z = np.asarray(logits, dtype=np.float32)
    loss = -_log_softmax(z)[np.arange(n), np.asarray(labels)]
    mean1 = (loss * env).sum() / max(env.sum(), 1)
    mean0 = (loss * (1 - env)).sum() / max((1 - env).sum(), 1)
    if mean1 < mean0:
        env = 1 - env
    return env, irm_penalty(d, env.astype(f32))


class EIIL(Algorithm):
    """Pre-stage: ERM reference (``eiil_epochs``), its logits on every training point, two inferred
    environments (buffer ``env``); training: ``eiil_robust`` (GroupDRO or SharpDRO over 2 groups, held as
    ``self.robust`` and sharing the model) with ``env[idx]`` in place of severities."""

    name = "eiil"
    uses_groups = False

    def __init__(self, model, num_classes, num_groups, hparams=None, train_size=0, **kwargs):
        super().__init__(model, num_classes, num_groups, hparams, train_size, **kwargs)
        if self.train_size < 1:
            raise ConfigError("eiil needs train_size (one environment id per training point)")
        robust_cls = {"groupdro": GroupDRO, "sharpdro": SharpDRO}[self.hparams["eiil_robust"]]
        self.robust = robust_cls(model, num_classes, 2, self.hparams, train_size, register_model=False)
        self.children["robust"] = self.robust
        self.epochs = int(self.hparams["eiil_epochs"])
        self.steps = int(self.hparams["eiil_steps"])
        self.lr = float(self.hparams["eiil_lr"])
        self.buffers["env"] = np.zeros(self.train_size, dtype=np.int64)
        #: draws the initial soft assignments (N,) -> float32; the session sets it (PyTorch's generator)
        self.randn: Callable[[int], np.ndarray] | None = None

    def configure(self, optimizer):
        super().configure(optimizer)
        self.robust.configure(optimizer)

    def set_environments(self, env) -> None:
        env = np.asarray(env).astype(np.int64)
        self.buffers["env"] = env.copy()
        if self.robust.gen_adjustment > 0:
            self.robust.set_group_counts(np.bincount(env, minlength=2))
        self.robust.mark_prepared()

    def prepare(self, ctx: PrepareContext) -> None:
        if ctx.train_size != self.train_size:
            raise ConfigError(f"eiil was built for {self.train_size} training points, the pre-stage has "
                              f"{ctx.train_size}")
        reference = train_reference_erm(ctx, self.epochs, "EIIL reference ERM")
        logits, labels = collect_logits(reference, ctx, "EIIL reference logits")
        if bool((labels < 0).any()):
            raise ConfigError("ordered_batches() did not cover every training index")
        del reference
        init = self.randn(len(labels)) if self.randn is not None else None
        env, _ = infer_environments(logits, labels, self.steps, self.lr, init=init)
        self.set_environments(env)
        self.mark_prepared()

    def update(self, x, y, g, idx):
        e = self.buffers["env"][np.asarray(idx)]
        stats = self.robust.update(x, y, ms.Tensor(e.astype(np.int32)), idx)
        stats["selected"] = e == 1
        return stats
