"""Distribution-agnostic SharpDRO: per-sample worst-case weights from an OOD score instead of groups.

The same documented reading as the PyTorch ``SharpDROAgnostic`` (see its docstring and
the README): ``score`` (msp, energy, entropy, loss) on the first pass at w, ``select``
(top_fraction, threshold over a score memory of the training points), ``weighting``
(hard 1/k, soft softmax(score / T) over the selection), the step of the aware default
with these weights, and ``second_pass_selected_only``.  The threshold's quantile is
taken on the host (NumPy, linear interpolation as ``torch.quantile``).
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import ops

from sharpdro.backends.mindspore.algorithms.base import (Algorithm, BNSecondPass, add_grads, per_sample_losses,
                                                         register_step, restore, sam_perturb)
from sharpdro.errors import ConfigError
from sharpdro.methods.sharpdro_agnostic import top_k_count, unknown_score


def ood_score(logits, per_sample_loss, kind: str):
    """Out-of-distribution score per sample (higher = more OOD), detached."""
    logits = ops.stop_gradient(logits)
    if kind == "msp":
        return 1.0 - ops.amax(ops.softmax(logits, 1), 1)
    if kind == "energy":
        return -ops.logsumexp(logits, 1)
    if kind == "entropy":
        logp = ops.log_softmax(logits, 1)
        return -(ops.exp(logp) * logp).sum(1)
    if kind == "loss":
        return ops.stop_gradient(per_sample_loss)
    raise unknown_score(kind)


@register_step("sharpdro_agnostic")
class SharpDROAgnostic(Algorithm):
    """The PyTorch ``SharpDROAgnostic`` step; cross-key checks in its method description."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h = self.hparams
        self.rho, self.adaptive = float(h["rho"]), bool(h["adaptive"])
        self.bn_policy, self.add_back = h["bn_second_pass"], bool(h["add_back_first_grad"])
        self.score_kind, self.select_rule = h["score"], h["select"]
        self.fraction, self.weighting = float(h["fraction"]), h["weighting"]
        self.temperature = float(h["temperature"])
        self.selected_only = bool(h["second_pass_selected_only"])
        BNSecondPass(self.model, self.bn_policy)
        if self.select_rule == "threshold":
            if self.train_size < 1:
                raise ConfigError("select='threshold' needs train_size (the score memory has one entry per "
                                  "training point)")
            self.buffers["score_memory"] = np.full(self.train_size, np.nan, dtype=np.float32)

    def select(self, score, idx):
        """-> (weights [B] tensor, selected [B] bool NumPy, indices of the selection tensor or None)."""
        B = score.shape[0]
        top = None
        if self.select_rule == "top_fraction":
            top = ops.topk(score, top_k_count(self.fraction, B))[1]
            selected = np.zeros(B, dtype=bool)
            selected[top.asnumpy()] = True
        else:
            level = 1.0 - self.fraction
            mem = self.buffers["score_memory"]
            s = score.asnumpy().astype(np.float32)
            thr = np.float32(np.nanquantile(mem, level)) if np.isfinite(mem).any() else np.float32(np.quantile(s, level))
            selected = s >= thr
            mem[np.asarray(idx)] = s
        mask = ms.Tensor(selected.astype(np.float32))
        if self.weighting == "hard":
            weights = mask / ops.clamp(mask.sum(), min=1.0)
        else:
            logits = ops.masked_fill(score / self.temperature, ms.Tensor(~selected), float("-inf"))
            weights = ops.nan_to_num(ops.softmax(logits, 0), nan=0.0)
        return ops.stop_gradient(weights), selected, top

    def _first(self):
        model = self.model

        def fn(x, y):
            logits, per = per_sample_losses(model, x, y)
            return per.mean(), (logits, per)

        return fn

    def _second(self):
        model = self.model

        def fn(x, y, weights, base):
            _, per_adv = per_sample_losses(model, x, y)
            return (weights * (per_adv - base)).sum(), per_adv

        return fn

    def update(self, x, y, groups, idx):
        (_, (logits, per)), grads1 = self._grad("first", self._first())(x, y)
        score = ood_score(logits, per, self.score_kind)
        weights, selected, top = self.select(score, idx)
        params = self._params()
        saved = sam_perturb(params, grads1, self.rho, self.adaptive)
        base = ops.stop_gradient(per)
        second = self._grad("second", self._second())
        with BNSecondPass(self.model, self.bn_policy):
            if self.selected_only:
                _, grads2 = second(ops.gather(x, top, 0), ops.gather(y, top, 0), ops.gather(weights, top, 0),
                                   ops.gather(base, top, 0))
            else:
                _, grads2 = second(x, y, weights, base)
        restore(params, saved)
        self._opt()(add_grads(grads1, grads2) if self.add_back else grads2)
        return self._stats(logits, per, y, selected=selected)
