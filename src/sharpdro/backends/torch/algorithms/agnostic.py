"""Distribution-agnostic SharpDRO: per-sample worst-case weights from an OOD score instead of groups.

The released code does not contain this setting; this is a documented, configurable
reading of the paper (see the method notes / README):

- ``score`` on the first pass at w (detached): ``msp`` 1 - max softmax, ``energy``
  -logsumexp(logits), ``entropy`` predictive entropy, ``loss`` per-sample CE.
  Higher = more out-of-distribution.
- ``select``: ``top_fraction`` keeps the k = ceil(f B) highest scores of the batch;
  ``threshold`` keeps the scores >= the (1 - f) quantile of a score memory that holds
  each training point's most recent score (a rolling one-epoch window, buffer
  ``score_memory`` [train_size]; the quantile is taken before the batch's own scores
  are written; while the memory is still empty the batch's own quantile is used).
- ``weighting``: ``hard`` gives each selected sample 1/k; ``soft`` gives the
  selected samples softmax(score / temperature) (a softmax restricted to the
  selection; ``fraction=1`` makes it a softmax over the whole batch).
- step: as the aware default with the group weights replaced by these weights:
  eps from the batch mean loss; second pass sum_i w_i (l_i(w+eps) - l_i(w));
  first-pass gradient added back (``add_back_first_grad``).
- ``second_pass_selected_only`` (top_fraction + hard only): the second pass runs on
  the k selected samples only, so its cost falls with f.  Without BatchNorm it is
  the same step; with BatchNorm the second pass normalises with the statistics of
  the selected samples instead of the whole batch.
"""
from __future__ import annotations

import torch

from sharpdro.backends.torch.algorithms.base import Algorithm, bn_second_pass, register_step
from sharpdro.errors import ConfigError
from sharpdro.methods.sharpdro_agnostic import top_k_count, unknown_score


def ood_score(logits: torch.Tensor, per_sample_loss: torch.Tensor, kind: str) -> torch.Tensor:
    """Out-of-distribution score per sample (higher = more OOD), detached."""
    logits = logits.detach()
    if kind == "msp":
        return 1.0 - torch.softmax(logits, 1).amax(1)
    if kind == "energy":
        return -torch.logsumexp(logits, 1)
    if kind == "entropy":
        logp = torch.log_softmax(logits, 1)
        return -(logp.exp() * logp).sum(1)
    if kind == "loss":
        return per_sample_loss.detach()
    raise unknown_score(kind)


@register_step("sharpdro_agnostic")
class SharpDROAgnostic(Algorithm):
    """The distribution-agnostic step (see the module docstring); cross-key checks in its method description."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h = self.hparams
        self.rho, self.adaptive = float(h["rho"]), bool(h["adaptive"])
        self.bn_policy, self.add_back = h["bn_second_pass"], bool(h["add_back_first_grad"])
        self.score_kind, self.select_rule = h["score"], h["select"]
        self.fraction, self.weighting = float(h["fraction"]), h["weighting"]
        self.temperature = float(h["temperature"])
        self.selected_only = bool(h["second_pass_selected_only"])
        if self.select_rule == "threshold":
            if self.train_size < 1:
                raise ConfigError("select='threshold' needs train_size (the score memory has one entry per "
                                  "training point)")
            self._new_buffer("score_memory", torch.full((self.train_size,), float("nan"), dtype=self._dtype),
                             stepped=True)

    def select(self, score: torch.Tensor, idx: torch.Tensor):
        """-> (weights [B], selected [B] bool, indices of the selection or None)."""
        B = score.shape[0]
        top = None
        if self.select_rule == "top_fraction":
            top = score.topk(top_k_count(self.fraction, B)).indices
            selected = torch.zeros(B, dtype=torch.bool, device=score.device).index_fill_(0, top, True)
        else:
            level = 1.0 - self.fraction
            mem = self.score_memory
            thr = torch.nanquantile(mem, level)
            thr = torch.where(torch.isnan(thr), torch.quantile(score.to(mem.dtype), level), thr)
            selected = score.to(mem.dtype) >= thr
            self._write_global_(mem, idx, score)  # every replica's scores: the same memory everywhere
        if self.weighting == "hard":
            mask = selected.to(score.dtype)
            weights = mask / mask.sum().clamp(min=1.0)
        else:
            logits = (score / self.temperature).masked_fill(~selected, float("-inf"))
            weights = torch.nan_to_num(torch.softmax(logits, 0), nan=0.0)
        return weights, selected, top

    def update(self, x, y, groups, idx):
        opt = self._begin_step()
        with self._first_pass():
            logits, per = self._forward(x, y)
            self._backward(per.mean())
        score = ood_score(logits, per, self.score_kind)
        weights, selected, top = self.select(score, idx)
        params, saved = self._perturb(self.rho, self.adaptive)
        base = per.detach()
        with bn_second_pass(self.model, self.bn_policy):
            if self.selected_only:
                _, per_adv = self._forward(x.index_select(0, top), y.index_select(0, top))
                loss = ((per_adv - base.index_select(0, top)) * weights.index_select(0, top)).sum()
            else:
                _, per_adv = self._forward(x, y)
                loss = (weights * (per_adv - base)).sum()
            self._second_backward(loss, params, keep_first=self.add_back)
        self._finish_step(opt, params, saved)
        return self._stats(logits, per, y, selected=selected)
