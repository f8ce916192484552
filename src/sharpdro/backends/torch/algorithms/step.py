"""The step protocol every PyTorch method goes through: precision (AMP, fp16 loss scale) and data parallelism.

``configure`` hands over the optimizer, an ``amp.Precision`` and a ``distributed.Replicas``;
a method's ``update`` is written with the hooks below only (``_begin_step``, ``_forward``,
``_backward``, ``_perturb``, ``_second_backward``, ``_finish_step``, and the global-batch
reductions ``_group_mean``, ``_group_mean_grad``, ``_weighted_mean``, ``_write_global_``, ``_gather``),
so no method file mentions replicas or fp16.  In a single fp32 process the hooks reduce
to the plain calls (zero_grad, forward, backward, optimizer step).

Buffers registered with ``stepped=True`` (group weights, the score memory) are what a
step changes besides the weights: with fp16 they are snapshotted at ``_begin_step`` and
rolled back with the BatchNorm statistics when the step overflows.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from torch import nn

from sharpdro.backends.torch.algorithms.functional import (_bn_buffers, group_mean, params_with_grad,
                                                           per_sample_losses, replica_group_mean, restore_,
                                                           sam_perturb_)


class StepProtocol:
    """Mixin of :class:`~.base.Algorithm`: needs ``model``, ``optimizer``, ``num_groups`` and ``_stepped``."""

    precision = None  # amp.Precision (autocast + fp16 loss scale); None: plain fp32
    replicas = None   # distributed.Replicas with world_size > 1; None: one process

    def configure(self, optimizer: torch.optim.Optimizer, amp=None, replicas=None) -> None:
        """Hand over the optimizer (built over ``self.model.parameters()``) and the run's helpers.

        ``amp``: a :class:`~sharpdro.backends.torch.amp.Precision` (autocast, and for fp16 the
        loss scale with one unscale per pass and consistent overflow skips), or a bare
        zero-argument autocast factory (autocast only), or None (fp32).
        ``replicas``: a :class:`~sharpdro.backends.torch.distributed.Replicas` in a
        data-parallel run (global group statistics, the DDP forward module, the
        perturbation mode); in a single process it may only carry ``net`` (a compiled
        model); None: plain.
        """
        from sharpdro.backends.torch.amp import as_precision

        self.optimizer = optimizer
        self.precision = as_precision(amp, self._device)
        object.__setattr__(self, "_net", getattr(replicas, "net", None))
        self.replicas = replicas if replicas is not None and replicas.world_size > 1 else None

    @property
    def net(self) -> nn.Module:
        """The module training forward passes call: the DDP wrapper and/or compiled model, or the model."""
        return self._net if self._net is not None else self.model

    @property
    def world_size(self) -> int:
        return 1 if self.replicas is None else self.replicas.world_size

    def _scaling(self) -> bool:
        return self.precision is not None and self.precision.scaling

    def step_state(self) -> list[torch.Tensor]:
        """Buffers a step changes besides the weights (rolled back when an fp16 step overflows)."""
        return [getattr(self, name) for name in self._stepped]

    def _opt(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            raise RuntimeError(f"{type(self).__name__}.configure(optimizer) must be called before update()")
        return self.optimizer

    # -- one step ---------------------------------------------------------------------------
    def _begin_step(self) -> torch.optim.Optimizer:
        """zero_grad; with fp16 also clear the overflow flag and snapshot the step state."""
        opt = self._opt()
        opt.zero_grad(set_to_none=True)
        if self.precision is not None:
            self.precision.begin()
        if self._scaling():
            with torch.no_grad():
                self._step_snapshot = [t.clone() for t in self.step_state() + _bn_buffers(self.model)]
        return opt

    def _first_pass(self) -> ContextManager:
        """Context of a SAM first pass: ``no_sync`` for a per-replica (m-sharpness) perturbation."""
        if self.replicas is None:
            return contextlib.nullcontext()
        return self.replicas.first_pass()

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return per_sample_losses(self.net, x, y, self.precision)

    def _backward(self, loss: torch.Tensor) -> None:
        if self.precision is None:
            loss.backward()
        else:
            self.precision.backward(loss)

    def _perturb(self, rho: float, adaptive: bool) -> tuple[list, list]:
        """SAM ascent from the first-pass gradient in ``.grad`` (unscaled first: the true gradient)."""
        params = params_with_grad(self.model)
        if self._scaling():
            self.precision.unscale_(params)
        return params, sam_perturb_(params, rho, adaptive)

    def _second_backward(self, loss: torch.Tensor, params: list, keep_first: bool) -> None:
        """Backward of the second (perturbed) pass.

        ``keep_first``: the first-pass gradient stays and is summed with the second
        (SharpDRO's add-back); otherwise it is dropped.  With a loss scale or replicas the
        kept gradient is moved aside and added after the second pass has been unscaled
        and all-reduced on its own, so each pass is unscaled once and each gradient is
        all-reduced once (a per-replica first pass is averaged here, by hand).
        """
        if not keep_first:
            self._opt().zero_grad(set_to_none=True)
            self._backward(loss)
            return
        if not self._scaling() and self.replicas is None:
            self._backward(loss)  # accumulates into the first-pass gradient
            return
        first = [p.grad for p in params]
        for p in params:
            p.grad = None
        if self.replicas is not None and not self.replicas.first_pass_reduced:
            self.replicas.all_reduce_mean_(first)
        self._backward(loss)
        if self._scaling():
            self.precision.unscale_(params)
        with torch.no_grad():
            for p, g in zip(params, first):
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)

    def _finish_step(self, opt: torch.optim.Optimizer, params: list | None = None,
                     saved: list | None = None) -> None:
        """Restore w (SAM family), optimizer step; fp16: skip it and roll the step state back on overflow."""
        if saved is not None:
            restore_(params, saved)
        if self.precision is None:
            opt.step()
            return
        if self._scaling() and self.replicas is not None:
            self.replicas.all_reduce_sum_(self.precision.found_inf)  # every rank skips together
        self.precision.step(opt)
        snap, self._step_snapshot = self._step_snapshot, None
        if snap:
            bad = self.precision.overflowed()
            with torch.no_grad():
                for t, s in zip(self.step_state() + _bn_buffers(self.model), snap):
                    t.copy_(torch.where(bad, s, t))

    # -- reductions over the global batch ---------------------------------------------------
    def _group_mean(self, values: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group means and counts of the global batch (one process: :func:`group_mean`)."""
        if self.replicas is None:
            return group_mean(values, groups, self.num_groups)
        return replica_group_mean(values, groups, self.num_groups, self.replicas)

    def _group_mean_grad(self, values: torch.Tensor, groups: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Group means over the global ``counts`` whose GRADIENT is that of the global batch's group means.

        Data-parallel, the value is not all-reduced (no collective), so use it for backward only.
        """
        if self.replicas is None:
            return group_mean(values, groups, self.num_groups)[0]
        return replica_group_mean(values, groups, self.num_groups, self.replicas, counts, reduce_value=False)[0]

    def _weighted_mean(self, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_i w_i v_i / sum_i w_i over the global batch (data-parallel: x W, as DDP averages the replicas)."""
        if self.replicas is None:
            return (weights * values).sum() / weights.sum()
        total = self.replicas.all_reduce_sum_(weights.sum().detach().clone())
        return (weights * values).sum() * (self.replicas.world_size / total)

    def _gather(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each tensor concatenated over the replicas' batches (rank order); itself in one process."""
        if self.replicas is None:
            return tensors
        return tuple(self.replicas.all_gather(t) for t in tensors)

    @torch.no_grad()
    def _write_global_(self, memory: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> None:
        """``memory[idx] = values`` for every replica's batch (the same memory everywhere)."""
        values = values.to(memory.dtype)
        if self.replicas is None:
            memory[idx] = values
        else:
            memory[self.replicas.all_gather(idx)] = self.replicas.all_gather(values)
