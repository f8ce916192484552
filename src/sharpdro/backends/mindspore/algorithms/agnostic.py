"""Distribution-agnostic SharpDRO: per-sample worst-case weights from an OOD score instead of groups.

The same documented reading as the PyTorch ``SharpDROAgnostic`` (see its docstring and
the README): ``score`` (msp, energy, entropy, loss, feature_norm, gradnorm, input_hf) on the first pass at
w, ``select`` (global: a per-sample moving-average memory, normalised within each class,
against the training set's (1 - f) quantile refreshed once per epoch; top_fraction;
threshold over the latest scores of the training points), ``weighting``, the warm-up, the
step of the aware default with these weights, and ``second_pass_selected_only``.  The
memory and its statistics live on the host (NumPy: ``sharpdro.methods.sharpdro_agnostic``'s
reference functions; quantiles with linear interpolation as ``torch.quantile``).
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import ops

from sharpdro.backends.mindspore.algorithms.base import (Algorithm, BNSecondPass, add_grads, per_sample_losses,
                                                         register_step, restore, sam_perturb)
from sharpdro.errors import ConfigError
from sharpdro.methods.sharpdro_agnostic import (FEATURE_SCORES, MEMORY_SELECTIONS, global_weights, memory_update,
                                                normalised, selection_statistics, top_k_count, unknown_score)


def input_high_frequency(x):
    """Mean squared 4-neighbour Laplacian per image of ``x`` [B, C, H, W] (H, W >= 3)."""
    x = ops.stop_gradient(x).astype(ms.float32)
    lap = 4 * x[:, :, 1:-1, 1:-1] - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1] - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:]
    return (lap * lap).mean((1, 2, 3))


def ood_score(logits, per_sample_loss, kind: str, x=None, features=None):
    """Out-of-distribution score per sample (higher = more OOD), detached (see the PyTorch ``ood_score``)."""
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
    if kind == "feature_norm":
        h = ops.stop_gradient(features).reshape(features.shape[0], -1)
        return -ops.sqrt((h * h).sum(1))
    if kind == "gradnorm":
        p = ops.softmax(logits, 1)
        h = ops.stop_gradient(features).reshape(features.shape[0], -1)
        return -(ops.abs(p - 1.0 / p.shape[1]).sum(1) * ops.abs(h).sum(1))
    if kind == "input_hf":
        return input_high_frequency(x)
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
        self.warmup, self.decay = int(h["warmup_epochs"]), float(h["memory_decay"])
        self.normalize = bool(h["class_normalize"])
        self._selecting = True
        self.refresh_steps = int(h["refresh_steps"])
        self._steps = 0
        self._features = None
        BNSecondPass(self.model, self.bn_policy)
        if self.score_kind in FEATURE_SCORES:
            dense = [c for _, c in self.model.cells_and_names() if isinstance(c, ms.nn.Dense)]
            if not dense:
                raise ConfigError(f"score={self.score_kind!r} needs a model whose last layer is linear")
            self._last_dense = dense[-1]
        if self.select_rule in MEMORY_SELECTIONS:
            if self.train_size < 1:
                raise ConfigError(f"select={self.select_rule!r} needs train_size (the score memory has one entry "
                                  f"per training point)")
            C = self.num_classes
            self.buffers["score_memory"] = np.full(self.train_size, np.nan, dtype=np.float32)
            self.buffers["memory_labels"] = np.full(self.train_size, -1, dtype=np.int64)
            self.buffers["class_stats"] = np.stack([np.zeros(C), np.ones(C)]).astype(np.float32)
            self.buffers["threshold"] = np.array(np.nan, dtype=np.float32)

    # -- scores ------------------------------------------------------------------------------
    def _forward_scored(self, x, y):
        """(logits, per-sample loss, features of the last Dense layer or None) of a forward pass."""
        if self.score_kind not in FEATURE_SCORES:
            logits, per = per_sample_losses(self.model, x, y)
            return logits, per, None
        box = {}
        dense = self._last_dense
        construct = dense.construct

        def capture(inp):
            box["h"] = inp
            return construct(inp)

        dense.construct = capture
        try:
            logits, per = per_sample_losses(self.model, x, y)
        finally:
            del dense.construct  # the class's construct again
        return logits, per, box["h"]

    def ood_scores(self, x, y):
        """The score of each image as the model stands (the caller sets eval mode): the diagnostics' hook."""
        logits, per, feats = self._forward_scored(x, y)
        return ood_score(logits, per, self.score_kind, x, feats)

    # -- the global selection's statistics -------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        if self.select_rule != "global":
            return
        self._selecting = epoch >= self.warmup
        self._steps = 0

    def refresh_selection(self) -> None:
        stats, thr = selection_statistics(self.buffers["score_memory"], self.buffers["memory_labels"],
                                          self.num_classes, self.fraction, self.normalize)
        self.buffers["class_stats"] = stats.astype(np.float32)
        self.buffers["threshold"] = np.array(thr, dtype=np.float32)

    def _select_global(self, score, y, idx):
        if self._steps == 0 or (self.refresh_steps > 0 and self._steps % self.refresh_steps == 0):
            self.refresh_selection()
        self._steps += 1
        mem, lab = self.buffers["score_memory"], self.buffers["memory_labels"]
        idx = np.asarray(idx, dtype=np.int64)
        yn = y.asnumpy().astype(np.int64)
        mem[idx] = memory_update(mem[idx], score.asnumpy().astype(np.float32), self.decay)
        lab[idx] = yn
        z = normalised(mem[idx], yn, self.buffers["class_stats"]).astype(np.float64)
        thr = float(self.buffers["threshold"])
        if np.isnan(thr):
            thr = float(np.quantile(z, 1.0 - self.fraction))
        selected = (z >= thr) & self._selecting
        weights = global_weights(selected, z, thr, self.fraction, self.weighting, self.temperature).astype(np.float32)
        top = None
        if self.selected_only and self._selecting:
            pick = np.flatnonzero(selected)
            top = ms.Tensor(pick if len(pick) else np.array([int(np.argmax(z))]), ms.int32)
        return ms.Tensor(weights), selected, top

    def select(self, score, y, idx):
        """-> (weights [B] tensor, selected [B] bool NumPy, indices of the selection tensor or None)."""
        B = score.shape[0]
        top = None
        if self.select_rule == "global":
            return self._select_global(score, y, idx)
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
            logits, per, feats = self._forward_scored(x, y)
            return per.mean(), (logits, per, feats)

        def plain(x, y):
            logits, per = per_sample_losses(model, x, y)
            return per.mean(), (logits, per)

        return fn if self.score_kind in FEATURE_SCORES else plain

    def _second(self):
        model = self.model

        def fn(x, y, weights, base):
            _, per_adv = per_sample_losses(model, x, y)
            return (weights * (per_adv - base)).sum(), per_adv

        return fn

    def update(self, x, y, groups, idx):
        (_, aux), grads1 = self._grad("first", self._first())(x, y)
        logits, per, feats = aux[0], aux[1], (aux[2] if len(aux) > 2 else None)
        score = ood_score(logits, per, self.score_kind, x, feats)
        weights, selected, top = self.select(score, y, idx)
        if not (self._selecting or self.select_rule != "global"):  # warm-up: ERM's step (the memory was written)
            self._opt()(grads1)
            return self._stats(logits, per, y, selected=selected)
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
