"""Sharpness of the loss surface around trained weights (PyTorch).

What is measured, for a loss ``L`` (mean cross-entropy over a fixed image set) at the
trained weights ``w``:

- ``loss``: ``L(w)``.
- ``worst_increase``: ``max L(w + eps) - L(w)`` over the iterates of projected gradient
  ascent on ``eps`` in the L2 ball ``||eps|| <= rho`` over *all* trainable parameters
  (BatchNorm affine parameters and biases included).  ``eps`` starts at 0 (which is
  feasible, so the value is >= 0); each step moves ``eps`` by ``step_size * rho`` along
  the normalised gradient of ``L`` at ``w + eps`` and projects back onto the ball, so the
  first step is exactly SAM's perturbation.  Where the gradient is zero (an exact
  stationary point, e.g. the minimum of a quadratic) the step direction is a seeded
  Gaussian one instead, so the ascent can leave it.  With ``adaptive`` the ball is
  ASAM's, ``||eps / |w| || <= rho`` (element-wise), and the ascent runs in the scaled
  coordinates ``u = eps / |w|`` (the first step is the project's ASAM perturbation
  ``rho * w^2 g / ||w g||``).  This is a lower bound of the true maximum that tightens
  with the number of steps; for a quadratic ``0.5 eps^T A eps`` it converges to
  ``0.5 rho^2 lambda_max(A)``.
- ``mean_increase`` / ``std_increase`` at each radius ``r``: the mean and the sample
  standard deviation (ddof=1; None for one direction) over ``k`` random directions
  ``d`` of ``L(w + r d) - L(w)``.  ``d`` is filter-normalised (Li et al., 2018): a
  Gaussian draw whose every filter (a slice along dimension 0 of a weight with >= 2
  dimensions: a conv output filter, a row of a linear weight) is rescaled to the norm
  of the same filter of ``w``; every parameter with <= 1 dimension (BatchNorm weights
  and biases, biases) is zero in ``d``.  ``r`` is therefore relative: each filter moves
  by ``r`` times its own norm.  Direction ``j`` is drawn on the CPU by a
  ``torch.Generator`` seeded from ``(seed, j)`` alone, so every severity and every run of
  one architecture sees the same Gaussian draws (then scaled by its own weights).

The model is in eval mode throughout: BatchNorm uses its running statistics and dropout
is off, so ``L`` is a deterministic function of the parameters (the loss surface), not of
batch composition.  The computation is in the parameters' dtype (fp32, no autocast);
losses are accumulated in float64.  The parameters are restored bit for bit afterwards
(saved copies written back, then checked), as are the model's train/eval mode and
``.grad`` (gradients are taken with ``torch.autograd.grad`` and never stored).

The core functions take an *objective* ``f(with_grad) -> (loss, grads | None)`` that
evaluates the loss at the current values of ``params`` (perturbed in place), so they are
tested on closed-form losses directly and on models through :func:`model_objective`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sharpdro.metrics import accuracy

Objective = Callable[[bool], tuple[float, "list[torch.Tensor] | None"]]

# Integer tags of the random streams (never renumber).
_DIRECTION_TAG = 0x5D1
_ASCENT_TAG = 0x5D2


def stream_seed(seed: int, tag: int, index: int) -> int:
    """A 63-bit torch seed for stream ``(seed, tag, index)``: independent of every other stream."""
    state = np.random.SeedSequence([int(seed), int(tag), int(index)]).generate_state(2, dtype=np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & ((1 << 63) - 1)


def _generator(seed: int, tag: int, index: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(stream_seed(seed, tag, index))
    return gen


def _randn_like(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A Gaussian draw on the CPU in float32 (the same numbers on any device / dtype), then moved to ``p``."""
    return torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype)


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.double()) for t in tensors]))


# --------------------------------------------------------------------------- parameters
@contextlib.contextmanager
def preserved(params: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Yield saved copies of ``params``; on exit write them back and check the restore is exact."""
    saved = [p.detach().clone() for p in params]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        for p, s in zip(params, saved):
            if not torch.equal(p.detach(), s):  # pragma: no cover - copy_ is exact
                raise RuntimeError("internal error: the weights were not restored exactly after the measurement")


@torch.no_grad()
def _set(params: Sequence[torch.Tensor], base: Sequence[torch.Tensor], delta: Sequence[torch.Tensor],
         scale: float = 1.0) -> None:
    """``p <- base + scale * delta`` (computed from the saved base, never accumulated)."""
    for p, b, d in zip(params, base, delta):
        p.copy_(b + scale * d)


@torch.no_grad()
def _restore(params: Sequence[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    for p, s in zip(params, saved):
        p.copy_(s)


# --------------------------------------------------------------------------- objectives
def objective_from_loss(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]) -> Objective:
    """Wrap a differentiable closure ``loss_fn() -> scalar`` (reading ``params``) as an objective."""
    params = list(params)

    def objective(with_grad: bool):
        if not with_grad:
            with torch.no_grad():
                return float(loss_fn().double()), None
        with torch.enable_grad():
            loss = loss_fn()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
        return float(loss.detach().double()), grads

    return objective


def cross_entropy_per_sample(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.float(), targets, reduction="none")


def model_objective(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    params: Sequence[torch.Tensor] | None = None,
                    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy_per_sample,
                    stats: dict | None = None) -> Objective:
    """Mean of ``criterion(model(x), y)`` (per-sample losses) over every image of ``batches``.

    The gradient is accumulated batch by batch (memory of one batch).  The caller keeps the
    model in eval mode.  ``stats['correct']`` receives the number of correct argmax
    predictions of the last evaluation (for the accuracy at ``w``).
    """
    params = list(model.parameters()) if params is None else list(params)
    n = sum(int(y.shape[0]) for _, y in batches)
    if n == 0:
        raise ValueError("model_objective: no image to measure the loss on")

    def objective(with_grad: bool):
        total = torch.zeros((), dtype=torch.float64, device=params[0].device if params else "cpu")
        correct = 0
        grads = None
        for x, y in batches:
            if with_grad:
                with torch.enable_grad():
                    out = model(x)
                    loss = criterion(out, y).sum()
                    g = torch.autograd.grad(loss, params, allow_unused=True)
                g = [torch.zeros_like(p) if gi is None else gi.detach() for p, gi in zip(params, g)]
                if grads is None:
                    grads = g
                else:
                    torch._foreach_add_(grads, g)
            else:
                with torch.no_grad():
                    out = model(x)
                    loss = criterion(out, y).sum()
            total += loss.detach().double()
            if stats is not None and out.dim() == 2 and out.shape[0] == y.shape[0]:
                correct += int((out.detach().argmax(1) == y).sum())
        if stats is not None:
            stats["correct"] = correct
            stats["count"] = n
        if grads is not None:
            torch._foreach_div_(grads, float(n))
        return float(total) / n, grads

    return objective


# --------------------------------------------------------------------------- directions
def filter_normalized_direction(params: Sequence[torch.Tensor], seed: int, index: int) -> list[torch.Tensor]:
    """Random direction ``index`` of stream ``seed``, filter-normalised to ``params`` (Li et al., 2018).

    Parameters with <= 1 dimension get a zero direction; for the others each slice along
    dimension 0 is rescaled to the norm of the same slice of the parameter.  The Gaussian
    numbers come from a CPU ``torch.Generator`` seeded by ``(seed, index)``, drawn for the
    >= 2-dimensional parameters in order.
    """
    gen = _generator(seed, _DIRECTION_TAG, index)
    out = []
    for p in params:
        if p.dim() <= 1:
            out.append(torch.zeros_like(p))
            continue
        d = _randn_like(p, gen)
        w = p.detach()
        shape = (-1,) + (1,) * (p.dim() - 1)
        d_norm = torch.linalg.vector_norm(d.flatten(1), dim=1)
        w_norm = torch.linalg.vector_norm(w.flatten(1), dim=1)
        out.append(d * (w_norm / (d_norm + 1e-10)).view(shape))
    return out


def random_direction_increase(objective: Objective, params: Sequence[torch.Tensor],
                              directions: Callable[[int], Sequence[torch.Tensor]] | Sequence[Sequence[torch.Tensor]],
                              radii: Sequence[float], count: int | None = None,
                              base_loss: float | None = None, progress=None) -> dict:
    """``L(w + r d_j) - L(w)`` for every direction ``d_j`` and radius ``r``; restores ``params``.

    ``directions``: a list of directions (each a list shaped like ``params``) or a function
    ``j -> direction`` with ``count`` directions.  Returns ``loss``, ``radii``,
    ``increases`` (k x R), ``mean_increase``, ``std_increase`` (ddof=1; None when k < 2).
    """
    params = list(params)
    if callable(directions):
        if count is None:
            raise ValueError("random_direction_increase: give count with a direction function")
        get, k = directions, int(count)
    else:
        dirs = list(directions)
        get, k = (lambda j: dirs[j]), len(dirs)
    radii = [float(r) for r in radii]
    with preserved(params) as w0:
        loss0 = objective(False)[0] if base_loss is None else float(base_loss)
        inc = np.zeros((k, len(radii)), dtype=np.float64)
        for j in range(k):
            _restore(params, w0)  # a direction is built (e.g. filter-normalised) at w, not at a perturbed point
            d = list(get(j))
            for i, r in enumerate(radii):
                _set(params, w0, d, r)
                inc[j, i] = objective(False)[0] - loss0
            if progress is not None:
                progress(1)
    return {
        "loss": loss0,
        "radii": radii,
        "increases": inc.tolist(),
        "mean_increase": inc.mean(axis=0).tolist() if k else [float("nan")] * len(radii),
        "std_increase": inc.std(axis=0, ddof=1).tolist() if k >= 2 else [None] * len(radii),
    }


# --------------------------------------------------------------------------- worst case
def worst_case_increase(objective: Objective, params: Sequence[torch.Tensor], rho: float, steps: int,
                        adaptive: bool = False, step_size: float = 1.0, seed: int = 0, progress=None) -> dict:
    """Projected normalised-gradient ascent on ``eps`` in the (ASAM-scaled) L2 ball of radius ``rho``.

    Returns ``loss`` (at ``w``), ``worst_increase`` (max over the iterates, ``eps = 0``
    included), ``history`` (the increase after each step), ``eps_norm`` (the L2 norm of
    the final ``eps``) and ``random_steps`` (steps that met a zero gradient and took a
    seeded random direction).  Restores ``params``.
    """
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if steps < 1:
        raise ValueError(f"the worst case needs at least one ascent step, got {steps}")
    params = list(params)
    history: list[float] = []
    random_steps = 0
    with preserved(params) as w0:
        scale = [w.abs() for w in w0] if adaptive else None  # eps = scale * u, ||u|| <= rho
        loss0, grads = objective(True)
        u = [torch.zeros_like(p) for p in params]
        eps = u
        for k in range(steps):
            d = [s * g for s, g in zip(scale, grads)] if adaptive else list(grads)
            norm = float(global_norm(d))
            if not math.isfinite(norm):
                raise FloatingPointError(f"non-finite gradient in ascent step {k} (loss {loss0})")
            if norm <= 1e-30:  # exact stationary point: leave it along a seeded random direction
                gen = _generator(seed, _ASCENT_TAG, k)
                d = [_randn_like(p, gen) for p in params]
                if adaptive:  # the scaled coordinates of parameters with w = 0 cannot move anyway
                    d = [dd * (s != 0) for dd, s in zip(d, scale)]
                norm = float(global_norm(d))
                random_steps += 1
                if norm == 0.0:
                    break
            alpha = step_size * rho / norm
            u = [ui + alpha * di for ui, di in zip(u, d)]
            u_norm = float(global_norm(u))
            if u_norm > rho:
                u = [ui * (rho / u_norm) for ui in u]
            eps = [s * ui for s, ui in zip(scale, u)] if adaptive else u
            _set(params, w0, eps)
            loss, grads = objective(k < steps - 1)
            history.append(loss - loss0)
            if progress is not None:
                progress(1)
        eps_norm = float(global_norm(eps))
    return {
        "loss": loss0,
        "worst_increase": max([0.0] + history),
        "history": history,
        "eps_norm": eps_norm,
        "random_steps": random_steps,
    }


# --------------------------------------------------------------------------- a session
def _trainable(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, t in modes.items():
            m.training = t


def measure_model(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *, rho: float,
                  radii: Sequence[float], directions: int, ascent_steps: int, adaptive: bool = False,
                  step_size: float = 1.0, seed: int = 0,
                  criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy_per_sample,
                  progress=None) -> dict:
    """Loss, worst-case increase and random-direction increases of ``model`` on ``batches`` (eval mode).

    Returns ``loss``, ``accuracy`` (argmax, for classifiers), ``worst_increase`` (None when
    ``ascent_steps`` is 0), ``worst_history``, ``worst_eps_norm``, ``radii``,
    ``mean_increase``, ``std_increase`` and ``increases`` (directions x radii).
    """
    params = _trainable(model)
    stats: dict = {}
    with _eval_mode(model):
        objective = model_objective(model, batches, params, criterion=criterion, stats=stats)
        loss0, _ = objective(False)
        out = {"loss": loss0, "accuracy": accuracy(stats.get("correct", 0), stats["count"]) if stats.get("count")
               else None}
        if ascent_steps > 0:
            wc = worst_case_increase(objective, params, rho, ascent_steps, adaptive=adaptive, step_size=step_size,
                                     seed=seed, progress=progress)
            out.update(worst_increase=wc["worst_increase"], worst_history=wc["history"],
                       worst_eps_norm=wc["eps_norm"], worst_random_steps=wc["random_steps"])
        else:
            out.update(worst_increase=None, worst_history=[], worst_eps_norm=None, worst_random_steps=0)
        if directions > 0 and len(radii):
            rd = random_direction_increase(objective, params, lambda j: filter_normalized_direction(params, seed, j),
                                           radii, count=directions, base_loss=loss0, progress=progress)
            out.update(radii=rd["radii"], mean_increase=rd["mean_increase"], std_increase=rd["std_increase"],
                       increases=rd["increases"])
        else:  # no random directions asked for
            out.update(radii=[], mean_increase=[], std_increase=[], increases=[])
    return out


def measure_session(session, images: np.ndarray, labels: np.ndarray, *, rho: float, radii: Sequence[float],
                    directions: int, ascent_steps: int, adaptive: bool = False, step_size: float = 1.0,
                    seed: int = 0, batch_size: int = 256, progress=None) -> dict:
    """:func:`measure_model` on a :class:`TorchSession`'s model, for uint8 NHWC ``images`` and ``labels``."""
    model = session.algorithm.model
    batches = []
    for start in range(0, len(images), batch_size):
        x, y = session.to_device(images[start:start + batch_size], labels[start:start + batch_size])
        batches.append((x, y))
    return measure_model(model, batches, rho=rho, radii=radii, directions=directions, ascent_steps=ascent_steps,
                         adaptive=adaptive, step_size=step_size, seed=seed, progress=progress)


def work_units(directions: int, ascent_steps: int) -> int:
    """Progress units of one severity (one per ascent step, one per direction)."""
    return int(ascent_steps) + int(directions)
