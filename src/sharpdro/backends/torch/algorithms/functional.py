"""The formulas every PyTorch method shares (stateless functions over tensors).

- :func:`per_sample_losses`: logits and per-sample cross-entropy;
- :func:`group_mean`: per-group mean with counts clamped to 1 (empty group -> 0);
- :func:`check_group_ids`: one clear error for a group id outside ``[0, num_groups)``;
- :func:`replica_group_mean`: :func:`group_mean` over the global batch of a
  data-parallel run (sums and counts all-reduced);
- :func:`eg_update_`: exponentiated-gradient step of the group weights q;
- :func:`sam_perturb_` / :func:`restore_`: the SAM / ASAM ascent w <- w + eps and
  the exact restore of w (saved copies, not w + eps - eps), with foreach ops;
- :func:`bn_second_pass`: the BatchNorm running-statistics policy of the second pass.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from sharpdro.data.groups import GroupIdError, group_id_message
from sharpdro.errors import ConfigError


def per_sample_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      amp: Callable[[], ContextManager] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward pass: ``(logits, per-sample cross-entropy)``; the loss is computed in float32 or wider."""
    with (amp() if amp is not None else contextlib.nullcontext()):
        logits = model(x)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits, F.cross_entropy(logits, y, reduction="none")


def group_mean(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` [B] per group id in ``0..num_groups-1`` and the group counts.

    The count is clamped to 1, so an empty group's mean is 0.  Built from a one-hot
    matrix (comparison with ``arange``): differentiable in ``values``, deterministic,
    and free of host syncs (unlike ``bincount`` / ``one_hot`` on CUDA).
    """
    onehot = (groups.view(-1, 1) == torch.arange(num_groups, device=groups.device).view(1, -1)).to(values.dtype)
    counts = onehot.sum(0)
    sums = values @ onehot
    return sums / counts.clamp(min=1.0), counts


def _group_id_message(groups: torch.Tensor, num_groups: int) -> str:
    return group_id_message(groups.detach().reshape(-1).cpu().numpy(), num_groups)


def check_group_ids(groups: torch.Tensor, num_groups: int, sync: bool = True) -> None:
    """Raise :class:`GroupIdError` (naming the id and ``num_groups``) unless every id is in ``[0, num_groups)``.

    A float or bool tensor is refused too (ids are integers).  On the CPU the check reads host
    memory: no device to wait for.  On an accelerator ``sync=True`` reads one flag back (one host
    sync); ``sync=False`` (the engine's steps, which stay free of host syncs and whose data the
    engine checks once when it loads it) asserts on a CUDA device instead (``torch._assert_async``:
    the run fails, with CUDA's generic device-side assert message); another device reads the flag.
    """
    if groups.is_floating_point() or groups.dtype == torch.bool or groups.is_complex():
        raise GroupIdError(f"group ids must be an integer tensor (int64), got {groups.dtype}")
    ok = ((groups >= 0) & (groups < num_groups)).all()
    if groups.device.type == "cpu" or (not sync and groups.device.type == "cuda"):
        try:  # no Python-visible read of the flag: no host sync on a device, a plain check on the CPU
            torch._assert_async(ok, f"group id outside [0, {num_groups})")
        except RuntimeError:
            raise GroupIdError(_group_id_message(groups, num_groups)) from None
    elif not bool(ok):
        raise GroupIdError(_group_id_message(groups, num_groups))


def replica_group_mean(values: torch.Tensor, groups: torch.Tensor, num_groups: int, replicas=None,
                       counts: torch.Tensor | None = None, reduce_value: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`group_mean` of the global batch in a data-parallel run; ``group_mean`` in a single process.

    With W replicas: counts are summed over replicas (or taken from ``counts``, already
    global); the returned mean has the VALUE of the global group mean (sums all-reduced;
    with ``reduce_value=False`` only the gradient is right, which saves a collective when
    the value is not used) and the GRADIENT of W * local sum / global count, so that
    DDP's average of the replicas' gradients is the gradient of the global group mean.
    """
    if replicas is None or replicas.world_size == 1:
        if counts is None:
            return group_mean(values, groups, num_groups)
        onehot = (groups.view(-1, 1) == torch.arange(num_groups, device=groups.device).view(1, -1))
        return (values @ onehot.to(values.dtype)) / counts.clamp(min=1.0), counts
    onehot = (groups.view(-1, 1) == torch.arange(num_groups, device=groups.device).view(1, -1)).to(values.dtype)
    sums = values @ onehot
    if counts is None:
        counts = onehot.sum(0)
        if reduce_value:
            both = replicas.all_reduce_sum_(torch.cat([sums.detach(), counts]))
            global_sums, counts = both[:num_groups], both[num_groups:]
        else:
            counts = replicas.all_reduce_sum_(counts)
    elif reduce_value:
        global_sums = replicas.all_reduce_sum_(sums.detach().clone())
    denom = counts.clamp(min=1.0)
    local = sums * (replicas.world_size / denom)
    if not reduce_value:
        return local, counts
    return local + (global_sums / denom - local).detach(), counts


@torch.no_grad()
def eg_update_(q: torch.Tensor, losses: torch.Tensor, eta: float, present: torch.Tensor | None = None) -> torch.Tensor:
    """In place ``q <- q * exp(eta * L) / Z`` (exponentiated gradient on the simplex).

    ``L`` is shifted by its maximum before the exponential (it cancels in the
    normalisation), so large ``eta * L`` cannot overflow.

    ``present`` (bool [G], ``q_absent='skip'``): only the present groups are updated, and
    renormalised within their own mass, so an absent group's q does not move and q still
    sums to 1.  ``None`` (``q_absent='zero'``): every group, an absent one with its L = 0.
    """
    losses = losses.detach().to(q.dtype)
    if present is None:
        w = q * torch.exp(eta * (losses - losses.max()))
        q.copy_(w / w.sum())
        return q
    present = present.to(device=q.device, dtype=torch.bool)
    zero = torch.zeros_like(q)
    shift = torch.where(present, losses, losses.min()).max()  # the max over the present groups
    w = torch.where(present, q * torch.exp(eta * (losses - shift)), zero)
    mass = torch.where(present, q, zero).sum()
    q.copy_(torch.where(present, w * (mass / w.sum().clamp(min=torch.finfo(q.dtype).tiny)), q))
    return q


def params_with_grad(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.grad is not None]


@torch.no_grad()
def sam_perturb_(params: list[torch.Tensor], rho: float, adaptive: bool = False) -> list[torch.Tensor]:
    """SAM ascent from the gradients in ``p.grad``: ``w <- w + eps``; returns copies of the old ``w``.

    SAM:  eps = rho * g / (||g|| + 1e-12).
    ASAM: eps = rho * w^2 * g / (||w * g|| + 1e-12)  (element-wise; ||.|| over all parameters).
    """
    if not params:
        return []
    saved = torch._foreach_mul(params, 1.0)  # copies (x * 1.0 is x, signed zeros included), one foreach call
    grads = [p.grad for p in params]
    if adaptive:
        scaled = torch._foreach_mul(torch._foreach_abs(saved), grads)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
        eps = torch._foreach_mul(torch._foreach_mul(saved, saved), grads)
        scale = rho / (norm + 1e-12)
        torch._foreach_mul_(eps, scale.to(eps[0].dtype))
    else:
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        scale = rho / (norm + 1e-12)
        eps = torch._foreach_mul(grads, scale.to(grads[0].dtype))
    torch._foreach_add_(params, eps)
    return saved


@torch.no_grad()
def restore_(params: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    """Copy the saved weights back (exact, unlike subtracting eps)."""
    if params:
        torch._foreach_copy_(params, saved)


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out += [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    return out


@contextlib.contextmanager
def bn_second_pass(model: nn.Module, policy: str) -> Iterator[None]:
    """BatchNorm running statistics during a SAM second pass.

    ``freeze``: running mean / var / num_batches_tracked are saved before and copied
    back after, so they are exactly as the first pass left them (the forward still
    normalises with the batch statistics, as in training).  The official code sets
    momentum 0 instead, which also keeps mean/var but still counts the batch.
    ``update``: the second pass updates them like any training forward.
    """
    if policy == "update":
        yield
        return
    if policy != "freeze":
        raise ConfigError(f"bn_second_pass must be 'freeze' or 'update', got {policy!r}")
    bufs = _bn_buffers(model)
    saved = [b.clone() for b in bufs]
    try:
        yield
    finally:
        if bufs:
            with torch.no_grad():
                torch._foreach_copy_(bufs, saved)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
