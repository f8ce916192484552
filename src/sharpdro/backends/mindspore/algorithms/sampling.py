"""The sampled second pass of SAM / SharpDRO for MindSpore (the counterpart of the PyTorch ``sampling.py``).

The estimator and the seeding are in :mod:`sharpdro.methods.sampling`.  The draw is
made on the host with NumPy (:func:`~sharpdro.methods.sampling.draw_numpy`, generator
seeded with ``step_seed(sample_seed, 0, sample_draws)``): the same law as the PyTorch
device draw, not the same indices, since the two libraries' generators differ.  Parity
between the backends is therefore checked for the same draw: ``draw_fn`` (both backends)
imposes the indices.  BatchNorm, as in PyTorch: ``sampled_bn_stats='sample'`` (default)
normalises with the subsample's statistics; ``'first_pass'`` records each layer's
full-batch mean and biased variance in the first pass and normalises the sampled pass
with them (``ops.batch_norm`` in inference form, no gradient through the statistics).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from sharpdro.backends.mindspore.algorithms.base import BNSecondPass, F32
from sharpdro.methods.sampling import draw_numpy, sample_count, second_pass_settings, step_seed

MASK63 = (1 << 63) - 1


def _batchnorms(model: nn.Cell) -> list[nn.Cell]:
    return [c for _n, c in model.cells_and_names() if isinstance(c, nn.BatchNorm2d)]


@contextlib.contextmanager
def capture_bn_stats(model: nn.Cell, into: dict) -> Iterator[None]:
    """Record ``into[cell] = (mean, biased var)`` of every training-mode BatchNorm layer's input."""
    patched = []

    def wrap(cell):
        original = cell.construct

        def construct(x):
            if cell.training:
                xs = ops.stop_gradient(x)
                mean = xs.mean((0, 2, 3))
                into[cell] = (mean, ((xs - mean.reshape(1, -1, 1, 1)) ** 2).mean((0, 2, 3)))
            return original(x)

        return construct

    try:
        for cell in _batchnorms(model):
            cell.construct = wrap(cell)
            patched.append(cell)
        yield
    finally:
        for cell in patched:
            del cell.construct


@contextlib.contextmanager
def frozen_bn_stats(stats: dict) -> Iterator[None]:
    """Every BatchNorm layer in ``stats`` normalises with its recorded statistics."""
    patched = []

    def frozen(cell, mean, var):
        return lambda x: ops.batch_norm(x, mean, var, cell.gamma, cell.beta, False, 0.1, cell.eps)

    try:
        for cell, (mean, var) in stats.items():
            cell.construct = frozen(cell, mean, var)
            patched.append(cell)
        yield
    finally:
        for cell in patched:
            del cell.construct


class SampledSecondPass:
    """Mixin of the MindSpore SAM-family steps; ``draw_fn(weights ndarray [B], m) -> indices`` imposes the draw."""

    draw_fn: Callable[[np.ndarray, int], np.ndarray] | None = None
    last_draw: np.ndarray | None = None

    def _init_sampler(self) -> None:
        self.second_pass_fraction, self.sampling, self.sampled_bn, self.sampled = second_pass_settings(self.hparams)
        self._bn_stats: dict = {}
        if self.sampled:
            seed = ms.get_seed()
            self.buffers["sample_seed"] = np.array(int(seed or 0) & MASK63, dtype=np.int64)
            self.buffers["sample_draws"] = np.zeros((), dtype=np.int64)

    def _capture_first_pass(self):
        self._bn_stats = {}
        if not self.sampled or self.sampled_bn != "first_pass":
            return contextlib.nullcontext()
        return capture_bn_stats(self.model, self._bn_stats)

    def draw(self, weights: np.ndarray) -> np.ndarray:
        m = sample_count(self.second_pass_fraction, len(weights))
        draws = int(self.buffers["sample_draws"])
        if self.draw_fn is not None:
            idx = np.asarray(self.draw_fn(weights, m), dtype=np.int64)
        else:
            rng = np.random.default_rng(step_seed(int(self.buffers["sample_seed"]), 0, draws))
            idx = draw_numpy(weights, m, rng, self.sampling)
        self.buffers["sample_draws"] = np.array(draws + 1, dtype=np.int64)
        self.last_draw = idx
        return idx

    def _sampled_grads(self, x, y, per, weights: np.ndarray):
        """Gradients at w + eps of (A / m) sum_j (l_{i_j}(w + eps) - l_{i_j}(w)), i_j drawn from ``weights``."""
        weights = np.asarray(weights, dtype=np.float32)
        idx = self.draw(weights)
        scale = ms.Tensor(np.float32(weights.sum(dtype=np.float32)) / np.float32(len(idx)), F32)
        sel = ms.Tensor(idx.astype(np.int32))
        model = self.model

        def fn(xs, ys, base, scale):
            from sharpdro.backends.mindspore.algorithms.base import per_sample_losses

            _, per_adv = per_sample_losses(model, xs, ys)
            return scale * (per_adv - base).sum(), per_adv

        frozen = frozen_bn_stats(self._bn_stats) if self.sampled_bn == "first_pass" else contextlib.nullcontext()
        with BNSecondPass(self.model, self.bn_policy), frozen:
            _, grads = self._grad("second_sampled", fn)(
                ops.gather(x, sel, 0), ops.gather(y, sel, 0), ops.stop_gradient(ops.gather(per, sel, 0)), scale)
        self._bn_stats = {}
        return grads
