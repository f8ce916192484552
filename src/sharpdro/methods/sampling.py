"""The sampled second pass of SAM / SharpDRO, framework-neutral part (``algorithm.second_pass_fraction``).

The second pass of a SharpDRO step differentiates, at w + eps,

    S = sum_i a_i (l_i(w + eps) - l_i(w)),   a_i = q_g(i) / n_g(i)

(SAM: a_i = 1 / B).  With f < 1 it runs on m = ceil(f B) indices i_1..i_m drawn with
probabilities a_i / A (A = sum_i a_i) and differentiates the estimate

    S_hat = (A / m) sum_j (l_{i_j}(w + eps) - l_{i_j}(w)),

which is unbiased for S (and its gradient for S's gradient) as long as l_i(w + eps)
does not depend on which samples are drawn: true without BatchNorm.  With BatchNorm
(``sampled_bn_stats``):

- ``sample`` (the default): the sampled pass normalises with the subsample's own
  statistics, as any training forward does.  Biased, but measured close to the exact
  step (cosine 0.94 to its second-pass gradient on a cnn) and trains like it in a smoke check;
- ``first_pass``: the first pass's full-batch statistics, held fixed.  The estimator is then
  unbiased, but for the frozen-statistics second pass, which lacks the gradient through
  the batch statistics and was measured far from the exact step (cosine 0.49); a smoke
  run with it trained badly.  See ``benchmarks/README.md``.

Two draws with the same estimator (the expected multiplicity of i is m a_i / A in both):

- ``multinomial``: m i.i.d. draws (with replacement);
- ``systematic``: the samples sorted by weight, laid end to end on [0, A), and the m
  points (u + k) A / m, k = 0..m-1, for one uniform u: a stratified draw, so a group gets
  floor or ceil of m Q_g / A draws (Q_g its total weight), never a random number of them.
  A sample of weight above A / m is drawn more than once in either scheme.

The draw of step t on replica r uses a generator seeded with :func:`step_seed`
(the run's seed, r, t): its state is (seed, t), two integers a checkpoint holds
(buffers ``sample_seed``, ``sample_draws``), so a resumed run draws as an
uninterrupted one and the state does not depend on the device.
"""
from __future__ import annotations

import math

import numpy as np

SAMPLING_SCHEMES = ("systematic", "multinomial")
MASK64 = (1 << 64) - 1
SAMPLER_BUFFERS = ("sample_seed", "sample_draws")  # present only when second_pass_fraction < 1


def second_pass_settings(h) -> tuple[float, str, str, bool]:
    """(fraction, sampling scheme, BatchNorm statistics of the sampled pass, sampled?) of a step's hparams."""
    fraction = float(h["second_pass_fraction"])
    return fraction, h["second_pass_sampling"], h["sampled_bn_stats"], fraction < 1.0


def sample_count(fraction: float, batch: int) -> int:
    """m = ceil(f B), at least 1 and at most B (a tiny tolerance absorbs 0.1 * 30 = 3.0000000000000004)."""
    return max(1, min(int(batch), math.ceil(float(fraction) * batch - 1e-9)))


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def step_seed(seed: int, rank: int, draws: int) -> int:
    """The generator seed of draw number ``draws`` on replica ``rank`` (a 63-bit integer, host arithmetic)."""
    x = _splitmix64(int(seed) & MASK64)
    x = _splitmix64(x ^ (int(rank) & MASK64))
    x = _splitmix64(x ^ (int(draws) & MASK64))
    return x >> 1


def systematic_positions(u: float, m: int, total: float) -> np.ndarray:
    """The points (u + k) total / m, k = 0..m-1 (float64)."""
    return (u + np.arange(m, dtype=np.float64)) * (total / m)


def draw_numpy(weights: np.ndarray, m: int, rng: np.random.Generator, scheme: str = "systematic") -> np.ndarray:
    """Indices [m] drawn with probabilities proportional to ``weights`` (the NumPy draw; the MindSpore step's)."""
    w = np.asarray(weights, dtype=np.float64)
    if scheme == "multinomial":
        c = np.cumsum(w)
        return np.minimum(np.searchsorted(c, rng.random(m) * c[-1], side="right"), len(w) - 1)
    if scheme != "systematic":
        raise ValueError(f"unknown sampling scheme {scheme!r}; allowed: {', '.join(SAMPLING_SCHEMES)}")
    order = np.argsort(w, kind="stable")
    c = np.cumsum(w[order])
    k = np.searchsorted(c, systematic_positions(rng.random(), m, c[-1]), side="right")
    return order[np.minimum(k, len(w) - 1)]
