"""The sampled second pass of SAM / SharpDRO for PyTorch (``algorithm.second_pass_fraction`` < 1).

The estimator, the draws and the seeding are described in :mod:`sharpdro.methods.sampling`.
Here: the device draw (:func:`draw_indices`: ``torch.multinomial`` or a systematic draw,
no host sync); the BatchNorm handling of ``sampled_bn_stats='first_pass'``
(:func:`capture_bn_stats` records each BatchNorm layer's full-batch mean and biased
variance in the first pass; :func:`frozen_bn_stats` makes the sampled pass normalise with
them, so a sample's loss at w + eps does not depend on the other samples drawn; the
default ``'sample'`` normalises with the subsample's statistics); and the mixin
:class:`SampledSecondPass` the SAM and SharpDRO steps call.

With f = 1 (the default) nothing here runs: the steps take their exact path.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from sharpdro.backends.torch.algorithms.functional import bn_second_pass
from sharpdro.errors import ConfigError
from sharpdro.methods.sampling import sample_count, second_pass_settings, step_seed

MASK63 = (1 << 63) - 1


def draw_indices(weights: torch.Tensor, m: int, generator: torch.Generator,
                 scheme: str = "systematic") -> torch.Tensor:
    """Indices [m] drawn with probability proportional to ``weights`` [B] (>= 0), on their device, no host sync."""
    if scheme == "multinomial":
        return torch.multinomial(weights, m, replacement=True, generator=generator)
    order = torch.argsort(weights, stable=True)
    c = torch.cumsum(weights.index_select(0, order).to(torch.float64), 0)
    u = torch.rand((), generator=generator, device=weights.device, dtype=torch.float64)
    pos = (u + torch.arange(m, device=weights.device, dtype=torch.float64)) * (c[-1] / m)
    k = torch.searchsorted(c, pos, right=True).clamp_(max=weights.numel() - 1)
    return order.index_select(0, k)


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _recording_forward(mod: nn.Module, into: dict, x: torch.Tensor) -> torch.Tensor:
    """``_BatchNorm.forward`` in training mode (exponential average), through the kernel call that
    ``F.batch_norm`` makes, which also returns the batch mean and 1 / sqrt(var + eps) it normalised with:
    the same output, and the statistics for free."""
    mod._check_input_dim(x)
    track = mod.track_running_stats
    if track and mod.num_batches_tracked is not None:
        mod.num_batches_tracked.add_(1)
    out, mean, invstd, _, _ = torch._batch_norm_impl_index(
        x, mod.weight, mod.bias, mod.running_mean if track else None, mod.running_var if track else None,
        True, mod.momentum, mod.eps, torch.backends.cudnn.enabled)
    into[mod] = (mean.detach(), (invstd.detach().double().pow(-2) - mod.eps).to(invstd.dtype))
    return out


def _recordable(mod: nn.Module) -> bool:
    return (type(mod).forward is nn.modules.batchnorm._BatchNorm.forward and mod.training
            and mod.momentum is not None)


@contextlib.contextmanager
def capture_bn_stats(model: nn.Module, into: dict) -> Iterator[None]:
    """Record ``into[module] = (mean, biased var)`` of every training-mode BatchNorm layer's batch.

    These are the statistics the layer normalises with in this (first, full-batch) pass.
    A plain BatchNorm layer returns them from its own kernel (no extra work); another
    kind (SyncBatchNorm, cumulative-average momentum) is measured by a forward pre-hook
    (``var_mean`` of its input: for SyncBatchNorm the replica's own shard's statistics,
    not the global ones).  float32 or wider.
    """
    def hook(mod, inputs):
        if not mod.training:
            return
        x = inputs[0].detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        var, mean = torch.var_mean(x, dim=[d for d in range(x.dim()) if d != 1], correction=0)
        into[mod] = (mean, var)

    handles, patched = [], []
    try:
        for m in _batchnorms(model):
            if _recordable(m):
                m.forward = functools.partial(_recording_forward, m, into)
                patched.append(m)
            else:
                handles.append(m.register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
        for m in patched:
            del m.forward


def _frozen_forward(mod: nn.Module, mean: torch.Tensor, var: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # training=False: normalise with the given statistics (constants: no gradient through them),
    # leave the running statistics alone
    return F.batch_norm(x, mean, var, mod.weight, mod.bias, False, 0.0, mod.eps)


@contextlib.contextmanager
def frozen_bn_stats(stats: dict) -> Iterator[None]:
    """Every BatchNorm layer in ``stats`` normalises with its recorded statistics (instance ``forward``)."""
    patched = []
    try:
        for mod, (mean, var) in stats.items():
            mod.forward = functools.partial(_frozen_forward, mod, mean, var)
            patched.append(mod)
        yield
    finally:
        for mod in patched:
            del mod.forward


class SampledSecondPass:
    """Mixin of the SAM-family steps (needs :class:`~.base.Algorithm`): the sampled second pass.

    ``draw_fn`` (None: the seeded device draw) may be set to a callable
    ``(weights [B], m) -> indices [m]`` to impose the draw (tests; parity with MindSpore).
    """

    draw_fn: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    last_draw: torch.Tensor | None = None

    def _init_sampler(self) -> None:
        self.second_pass_fraction, self.sampling, self.sampled_bn, self.sampled = second_pass_settings(self.hparams)
        self._bn_stats: dict = {}
        self._generator: torch.Generator | None = None
        if self.sampled:
            self._sample_seed = torch.initial_seed() & MASK63  # the run's seed (the session seeds torch first)
            self._draws = 0
            self._new_buffer("sample_seed", torch.tensor(self._sample_seed, dtype=torch.long))
            self._new_buffer("sample_draws", torch.zeros((), dtype=torch.long))

    def configure(self, optimizer, amp=None, replicas=None) -> None:
        super().configure(optimizer, amp, replicas)
        net = getattr(replicas, "net", None)
        compiled = net is not None and any(type(m).__name__ == "OptimizedModule" or hasattr(m, "_orig_mod")
                                           for m in (net, getattr(net, "module", None)) if m is not None)
        if self.sampled and self.sampled_bn == "first_pass" and compiled:
            # a compiled graph would not see the BatchNorm layers' patched forward
            raise ConfigError("algorithm.second_pass_fraction < 1 with sampled_bn_stats='first_pass' does not "
                              "run under train.compile=true; set train.compile=false")

    def _after_load(self) -> None:
        super()._after_load()
        if self.sampled:
            self._sample_seed, self._draws = int(self.sample_seed), int(self.sample_draws)

    def _capture_first_pass(self) -> contextlib.AbstractContextManager:
        """Around the first forward: record the BatchNorm statistics the sampled pass will use."""
        self._bn_stats = {}
        if not self.sampled or self.sampled_bn != "first_pass":
            return contextlib.nullcontext()
        return capture_bn_stats(self.model, self._bn_stats)

    def draw(self, weights: torch.Tensor) -> torch.Tensor:
        """The indices of this step's sampled pass (advances the draw counter)."""
        m = sample_count(self.second_pass_fraction, weights.numel())
        if self.draw_fn is not None:
            idx = torch.as_tensor(self.draw_fn(weights, m), device=weights.device).long()
        else:
            if self._generator is None or self._generator.device != weights.device:
                self._generator = torch.Generator(device=weights.device)
            rank = 0 if self.replicas is None else self.replicas.rank
            self._generator.manual_seed(step_seed(self._sample_seed, rank, self._draws))
            idx = draw_indices(weights, m, self._generator, self.sampling)
        self._draws += 1
        self.sample_draws.fill_(self._draws)
        self.last_draw = idx  # the step's subsample (local indices; tests, diagnostics)
        return idx

    def _sampled_second_pass(self, x: torch.Tensor, y: torch.Tensor, base: torch.Tensor, weights: torch.Tensor,
                             params: list, keep_first: bool) -> torch.Tensor:
        """Backward of (W A / m) sum_j (l_{i_j}(w + eps) - base_{i_j}), i_j drawn from ``weights`` [B].

        ``weights``: each local sample's weight a_i in the GLOBAL second-pass loss
        sum_i a_i (l_i(w + eps) - l_i(w)); A = sum of the local a_i; W replicas (DDP
        averages the replicas' gradients, whose sum is the unbiased estimate).
        Returns the drawn indices.
        """
        weights = weights.detach()
        idx = self.draw(weights)
        scale = weights.sum() * (self.world_size / idx.numel())
        frozen = frozen_bn_stats(self._bn_stats) if self.sampled_bn == "first_pass" else contextlib.nullcontext()
        with bn_second_pass(self.model, self.bn_policy), frozen:
            _, per_adv = self._forward(x.index_select(0, idx), y.index_select(0, idx))
            loss = scale.to(per_adv.dtype) * (per_adv - base.detach().index_select(0, idx)).sum()
            self._second_backward(loss, params, keep_first=keep_first)
        self._bn_stats = {}
        return idx
