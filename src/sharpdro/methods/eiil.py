"""Environment Inference for Invariant Learning (Creager et al. 2021), with GroupDRO or SharpDRO on top.

The environment inference works on the reference model's logits only, so it is written
once here in NumPy and both backends call it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from sharpdro.fields import NUM, Field
from sharpdro.methods.groupdro import GROUP_BUFFERS
from sharpdro.methods.registry import Q_RECORD, SELECTED_RECORD, MethodSpec, Prestage, register
from sharpdro.methods.sharpdro import SHARPDRO_HPARAMS


def _float(x) -> np.ndarray:
    """float64 stays float64 (exactness tests); anything else computes in float32 (as the training logits)."""
    x = np.asarray(x)
    return x if x.dtype == np.float64 else x.astype(np.float32)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(1, keepdims=True))


def irm_scale_grads(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """d_i = d/ds CE(s * z_i, y_i) at s = 1 = sum_c softmax(z_i)_c z_ic - z_iy (closed form)."""
    z = _float(logits)
    p = np.exp(_log_softmax(z))
    return ((p * z).sum(1) - z[np.arange(len(z)), np.asarray(labels)]).astype(z.dtype)


def irm_penalty(d: np.ndarray, q: np.ndarray):
    """sum_e (dR_e/ds at s=1)^2 with R_1 = mean_i q_i l_i(s z_i), R_0 = mean_i (1 - q_i) l_i(s z_i).

    The environment risks are averaged over all N points (as the EIIL reference
    implementation), so dR_1/ds = mean(q d) and dR_0/ds = mean((1 - q) d).
    """
    d, q = np.asarray(d), np.asarray(q)
    return np.mean(q * d) ** 2 + np.mean((1 - q) * d) ** 2


@dataclass
class Inference:
    """The result of :func:`run_inference`."""

    env: np.ndarray          # int64 [N]: 1 = the environment with the higher mean reference loss
    penalty: float           # IRM penalty of the hard split
    soft_penalty: float      # of the soft assignments at the last step
    steps: int               # Adam steps taken
    converged: bool          # by the stopping rule (see run_inference)

    def summary(self) -> dict:
        sizes = np.bincount(self.env, minlength=2)
        return {"penalty": self.penalty, "soft_penalty": self.soft_penalty, "steps": self.steps,
                "converged": self.converged, "environment_sizes": [int(sizes[0]), int(sizes[1])]}


CHECK_EVERY = 100    # steps between two evaluations of the stopping rule
WINDOW = 1000        # the rule compares the hard split's penalty with its value this many steps earlier


def run_inference(logits: np.ndarray, labels: np.ndarray, steps: int, lr: float, init: np.ndarray | None = None,
                  seed: int = 0, tol: float = 1e-4, stop: bool = True) -> Inference:
    """Two environments that MAXIMISE the IRM penalty of a fixed reference model.

    Soft assignments q_i = sigmoid(a_i) from ``init`` (a_i ~ N(0, 1), q = 1/2 everywhere
    being a stationary point; drawn from ``numpy.random.default_rng(seed)`` when None),
    Adam on -penalty (PyTorch's Adam arithmetic with the closed-form gradient, in the
    logits' precision), threshold at 1/2; environment 1 is the one with the higher mean
    reference loss.

    Stopping rule: every ``CHECK_EVERY`` steps the penalty P_t of the hard split is computed;
    the inference has *converged* at step t >= ``WINDOW`` when |P_t - P_{t-WINDOW}| <= tol * P_t
    (Adam moves each logit by about lr per step, so the hard split settles long before the
    soft penalty does).  With ``stop`` it ends there, else it runs all ``steps``;
    ``converged`` is the rule's verdict at the last check either way (False when fewer than
    ``WINDOW`` steps were run).
    """
    d = irm_scale_grads(logits, labels)
    f = d.dtype.type
    n = d.shape[0]
    a = (np.random.default_rng(seed).standard_normal(n) if init is None else np.asarray(init)).astype(d.dtype)
    m, v = np.zeros_like(a), np.zeros_like(a)
    b1, b2, eps = 0.9, 0.999, 1e-8
    history: dict[int, float] = {}
    converged = False
    t = 0
    m1 = m0 = f(0.0)
    for t in range(1, steps + 1):
        q = (f(1.0) / (f(1.0) + np.exp(-a))).astype(d.dtype)
        m1, m0 = (q * d).mean(dtype=d.dtype), ((f(1.0) - q) * d).mean(dtype=d.dtype)
        # d(-penalty)/dq_i = -(2 m1 d_i - 2 m0 d_i) / N;  dq/da = q (1 - q)
        grad_q = -(f(2.0) * m1 * d / f(n)) + f(2.0) * m0 * d / f(n)
        grad = (grad_q * (f(1.0) - q) * q).astype(d.dtype)
        m = (m + f(1 - b1) * (grad - m)).astype(d.dtype)
        v = (v * f(b2) + f(1 - b2) * grad * grad).astype(d.dtype)
        step_size = lr / (1 - b1 ** t)
        denom = (np.sqrt(v) / f(np.sqrt(1 - b2 ** t)) + f(eps)).astype(d.dtype)
        a = (a - f(step_size) * (m / denom)).astype(d.dtype)
        if t % CHECK_EVERY == 0:
            p = float(irm_penalty(d, (a > 0).astype(d.dtype)))
            history[t] = p
            past = history.get(t - WINDOW)
            converged = past is not None and abs(p - past) <= tol * abs(p)
            if converged and stop:
                break
    env = ((f(1.0) / (f(1.0) + np.exp(-a))) > 0.5).astype(np.int64)
    z = _float(logits)
    loss = -_log_softmax(z)[np.arange(n), np.asarray(labels)]
    mean1 = (loss * env).sum() / max(env.sum(), 1)
    mean0 = (loss * (1 - env)).sum() / max((1 - env).sum(), 1)
    if mean1 < mean0:
        env = 1 - env
    return Inference(env, float(irm_penalty(d, env.astype(d.dtype))), float(m1 ** 2 + m0 ** 2), int(t),
                     bool(converged))


def infer_environments(logits: np.ndarray, labels: np.ndarray, steps: int, lr: float,
                       init: np.ndarray | None = None, seed: int = 0, tol: float = 1e-4,
                       stop: bool = True) -> tuple[np.ndarray, float]:
    """(env ids int64 [N], penalty of the hard split) of :func:`run_inference`."""
    r = run_inference(logits, labels, steps, lr, init=init, seed=seed, tol=tol, stop=stop)
    return r.env, r.penalty


ROBUST_CHOICES = ("groupdro", "sharpdro")

def inference_caveat(prestage: Mapping[str, Any]) -> str | None:
    """A run whose environment inference did not converge (by the stopping rule) is reported as such."""
    if prestage.get("converged", True):
        return None
    return f"environment inference not converged ({prestage.get('steps', '?')} steps)"


SPEC = register(MethodSpec(
    name="eiil", label="EIIL", order=4,
    summary="ERM reference, two environments maximising its IRM penalty, GroupDRO/SharpDRO over them",
    hparams={
        "eiil_epochs": Field(None, int, "EIIL reference ERM epochs (null: train.epochs); the epoch kept is chosen "
                             "by eiil_reference", min=1, nullable=True, search=("int_uniform", 1, 20),
                             identity_default=1),
        "eiil_reference": Field("val_loss", str, "EIIL reference model: the epoch of lowest validation loss, or "
                                "the last", choices=("val_loss", "last")),
        "eiil_steps": Field(10000, int, "EIIL environment-inference Adam steps at most (the authors': 10,000)",
                            min=1, search=("choice", (500, 2000, 10000)), identity_default=2000),
        "eiil_lr": Field(0.001, NUM, "EIIL environment-inference learning rate (the authors': 1e-3)", min=0.0),
        "eiil_tol": Field(1e-4, NUM, "EIIL stopping rule: stop once the hard split's penalty changed by at most "
                          "tol (relative) over the last 1,000 steps", min=0.0),
        "eiil_early_stop": Field(True, bool, "EIIL: end the inference when the stopping rule holds (false: run "
                                 "all eiil_steps, as the authors; converged is recorded either way)"),
        "eiil_robust": Field("groupdro", str, "learner on the inferred environments", choices=ROBUST_CHOICES),
        **SHARPDRO_HPARAMS,  # the robust learner's
    },
    buffers=("env",) + tuple(f"robust.{b}" for b in GROUP_BUFFERS + ("prepared_flag",)),
    record_keys=Q_RECORD + SELECTED_RECORD,
    group_sampling=True,
    tune=("algorithm.eiil_epochs", "algorithm.eiil_steps", "algorithm.eta",
          "algorithm.q_absent", "data.sampler"),
    prestage=Prestage("ERM reference (eiil_epochs, chosen on validation loss); two environments "
                      "inferred from its logits", "env",
                      stand_in=lambda n: (np.arange(n) % 3 == 0).astype(np.int64), caveat=inference_caveat),
))
