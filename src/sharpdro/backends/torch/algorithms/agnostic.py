"""Distribution-agnostic SharpDRO: per-sample worst-case weights from an OOD score instead of groups.

The released code does not contain this setting; this is a documented, configurable
reading of the paper (see the method notes / README, and ``sharpdro.methods.sharpdro_agnostic``):

- ``score`` (higher = more out-of-distribution), detached, from the first pass at w:
  ``msp`` 1 - max softmax, ``energy`` -logsumexp(logits), ``entropy`` predictive entropy,
  ``loss`` per-sample CE (the model output scores: the paper's idea); with h the input of
  the last linear layer (the penultimate features), ``feature_norm`` -||h||_2 and ``gradnorm``
  minus the GradNorm of Huang et al. (2021), ||softmax - 1/C||_1 ||h||_1 (feature-space
  scores, ours); ``input_hf`` the mean squared 4-neighbour
  Laplacian of the (normalised) input image, no model at all (ours: the reference of what a
  detector can reach on photon-limited noise).
- ``select``: ``global`` (default) keeps a per-sample memory, an exponential moving average
  across epochs (``memory_decay``), indexed by the sample and written for every replica's
  batch (all-gathered, so every replica holds the same memory); it is normalised within each
  class and a sample is selected when its z reaches the (1 - f) quantile of z over the whole
  training set.  The class statistics and that threshold are refreshed from the memory at
  the first step of each epoch and every ``refresh_steps`` steps after it (on the device,
  masks instead of boolean indexing: no host sync; every replica computes the same from the
  same memory, so no collective either), so the step makes no host sync and no collective
  besides the all-gather of (index, score, label).  While the memory is empty the batch's
  own quantile of z stands in.  During the
  first ``warmup_epochs`` epochs the memory fills but nothing is selected: the step is
  ERM's (one pass).  ``top_fraction`` keeps the k = ceil(f B) highest scores of the batch;
  ``threshold`` keeps the scores >= the (1 - f) quantile of a memory holding each training
  point's most recent score (the first reading, kept as they were).
- ``weighting``: ``hard`` gives each selected sample 1/k (top_fraction, threshold) or
  1/max(k, f B) (global: at least the expected count, so a batch with few selected samples
  does not weigh them up, and at most 1 in all); ``soft`` gives softmax(score / temperature)
  over the selection (top_fraction, threshold) or s_i / max(sum s, f B) with
  s_i = sigmoid((z_i - threshold) / temperature) to every sample (global).
- step: as the aware default with the group weights replaced by these weights:
  eps from the batch mean loss; second pass sum_i w_i (l_i(w+eps) - l_i(w));
  first-pass gradient added back (``add_back_first_grad``).
- ``second_pass_selected_only`` (hard weighting): the second pass runs on the selected
  samples only, so its cost falls with f.  With ``global`` their number varies per batch:
  it is read on the host (one sync per step, the only one), and a batch with none runs the
  pass on its highest-z sample with weight 0 (every replica runs a second pass).  Without
  BatchNorm it is the same step; with BatchNorm the second pass normalises with the
  statistics of the selected samples instead of the whole batch.

Severity labels never reach this class: ``update`` receives ``groups=None`` (the method does
not need groups); the diagnostics are computed by the engine from the memory and the
``selected`` masks it returns.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from sharpdro.backends.torch.algorithms.base import Algorithm, bn_second_pass, register_step
from sharpdro.errors import ConfigError
from sharpdro.methods.sharpdro_agnostic import FEATURE_SCORES, MEMORY_SELECTIONS, top_k_count, unknown_score


def input_high_frequency(x: torch.Tensor) -> torch.Tensor:
    """Mean squared 4-neighbour Laplacian per image of ``x`` [B, C, H, W] (H, W >= 3)."""
    x = x.detach().float()
    lap = 4 * x[:, :, 1:-1, 1:-1] - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1] - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:]
    return lap.square().mean((1, 2, 3))


def ood_score(logits: torch.Tensor, per_sample_loss: torch.Tensor, kind: str, x: torch.Tensor | None = None,
              features: torch.Tensor | None = None) -> torch.Tensor:
    """Out-of-distribution score per sample (higher = more OOD), detached.

    ``x``: the input batch (``input_hf``); ``features``: the input of the last linear layer (``gradnorm``).
    """
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
    if kind == "feature_norm":
        return -features.detach().to(logits.dtype).flatten(1).norm(dim=1)
    if kind == "gradnorm":
        p = torch.softmax(logits, 1)
        h = features.detach().to(p.dtype).flatten(1)
        return -((p - 1.0 / p.shape[1]).abs().sum(1) * h.abs().sum(1))
    if kind == "input_hf":
        return input_high_frequency(x).to(logits.dtype)
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
        self.warmup, self.decay = int(h["warmup_epochs"]), float(h["memory_decay"])
        self.normalize = bool(h["class_normalize"])
        self._selecting = True  # select=global: False during the warm-up epochs (set by begin_epoch)
        self.refresh_steps = int(h["refresh_steps"])
        self._steps = 0  # steps since the epoch began (the statistics are refreshed every refresh_steps)
        self._features = None
        if self.score_kind in FEATURE_SCORES:
            linear = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
            if not linear:
                raise ConfigError(f"score={self.score_kind!r} needs a model whose last layer is linear")
            object.__setattr__(self, "_last_linear", linear[-1])  # not a submodule: the model holds it
        if self.select_rule in MEMORY_SELECTIONS:
            if self.train_size < 1:
                raise ConfigError(f"select={self.select_rule!r} needs train_size (the score memory has one entry "
                                  f"per training point)")
            C = self.num_classes
            self._new_buffer("score_memory", torch.full((self.train_size,), float("nan"), dtype=self._dtype),
                             stepped=True)
            self._new_buffer("memory_labels", torch.full((self.train_size,), -1, dtype=torch.long), stepped=True)
            self._new_buffer("class_stats", torch.stack([torch.zeros(C), torch.ones(C)]).to(self._dtype))
            self._new_buffer("threshold", torch.full((), float("nan"), dtype=self._dtype))

    # -- scores ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _capture(self):
        """Feature scores: hold the input of the last linear layer of the forward passes inside."""
        if self.score_kind not in FEATURE_SCORES:
            yield
            return

        def hook(_module, inputs, _output):
            self._features = inputs[0].detach()

        handle = self._last_linear.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _score(self, logits, per, x):
        score = ood_score(logits, per, self.score_kind, x, self._features)
        self._features = None
        return score

    @torch.no_grad()
    def ood_scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The score of each image as the model stands (the caller sets eval mode): the diagnostics' hook."""
        with self._capture():
            logits = self.predict(x).float()
        return self._score(logits, F.cross_entropy(logits, y, reduction="none"), x)

    # -- the global selection's statistics -------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        if self.select_rule != "global":
            return
        self._selecting = epoch >= self.warmup
        self._steps = 0  # the first step of the epoch refreshes the statistics

    def _normalised(self, memory: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lab = labels.clamp(min=0)
        z = (memory - self.class_stats[0][lab]) / self.class_stats[1][lab]
        return torch.where(labels >= 0, z, torch.full_like(z, float("nan")))

    @torch.no_grad()
    def refresh_selection(self) -> None:
        """Class statistics [2, C] and the global threshold from the memory (``selection_statistics``), on the
        device without a host sync (masks, no boolean indexing)."""
        mem, lab, C = self.score_memory, self.memory_labels, self.num_classes
        dev, f64 = mem.device, torch.float64
        stats = torch.stack([torch.zeros(C), torch.ones(C)]).to(device=dev, dtype=f64)
        ok = torch.isfinite(mem) & (lab >= 0)
        if self.normalize:
            lv = lab.clamp(min=0)
            v = torch.where(ok, mem.double(), torch.zeros((), dtype=f64, device=dev))
            cnt = torch.zeros(C, dtype=f64, device=dev).index_add_(0, lv, ok.double())
            mean = torch.zeros(C, dtype=f64, device=dev).index_add_(0, lv, v) / cnt.clamp(min=1)
            dev2 = torch.where(ok, (v - mean[lv]).square(), torch.zeros((), dtype=f64, device=dev))
            std = (torch.zeros(C, dtype=f64, device=dev).index_add_(0, lv, dev2) / cnt.clamp(min=1)).sqrt()
            present = cnt > 0
            stats[0] = torch.where(present, mean, stats[0])
            stats[1] = torch.where(present & (std > 0), std, stats[1])
        self.class_stats.copy_(stats.to(self.class_stats.dtype))
        z = self._normalised(mem, lab).double()  # nan where not seen
        self.threshold.copy_(torch.nanquantile(z, 1.0 - self.fraction).to(self.threshold.dtype))

    # -- the step ----------------------------------------------------------------------------
    def select(self, score: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        """-> (weights [B], selected [B] bool, indices of the selection or None)."""
        B = score.shape[0]
        top = None
        if self.select_rule == "global":
            return self._select_global(score, y, idx)
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

    @torch.no_grad()
    def _select_global(self, score: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        mem = self.score_memory
        if self._steps == 0 or (self.refresh_steps > 0 and self._steps % self.refresh_steps == 0):
            self.refresh_selection()
        self._steps += 1
        gi, gs, gy = self._gather(idx, score.to(mem.dtype), y)  # every replica's batch: the same memory
        old = mem[gi]
        mem[gi] = torch.where(torch.isnan(old), gs, self.decay * old + (1.0 - self.decay) * gs)
        self.memory_labels[gi] = gy
        z = self._normalised(mem[idx], y).double()
        thr = self.threshold.double()
        thr = torch.where(torch.isnan(thr), torch.quantile(z, 1.0 - self.fraction), thr)
        selected = (z >= thr) & self._selecting
        w = selected.double() if self.weighting == "hard" else torch.sigmoid((z - thr) / self.temperature)
        weights = (w / w.sum().clamp(min=self.fraction * score.shape[0])).to(score.dtype)
        top = None
        if self.selected_only and self._selecting:
            top = torch.nonzero(selected).flatten()  # the count sizes the pass: one host sync
            if top.numel() == 0:
                top = z.argmax().view(1)  # weight 0: a second pass on every replica all the same
        return weights, selected, top

    def update(self, x, y, groups, idx):
        opt = self._begin_step()
        selecting = self._selecting or self.select_rule != "global"
        with (self._first_pass() if selecting else contextlib.nullcontext()), self._capture():
            logits, per = self._forward(x, y)
            self._backward(per.mean())
        score = self._score(logits, per, x)
        weights, selected, top = self.select(score, y, idx)
        if not selecting:  # warm-up: ERM's step (the memory was written)
            self._finish_step(opt)
            return self._stats(logits, per, y, selected=selected)
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
