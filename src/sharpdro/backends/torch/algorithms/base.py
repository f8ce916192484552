"""The algorithm interface and the small pieces every method shares.

An :class:`Algorithm` is an ``nn.Module`` holding the network (``self.model``) and
every piece of algorithm state as registered buffers (group weights ``q``, JTT's
weights, EIIL's environments, the ``prepared`` flag ...), so ``state_dict()`` is a
complete checkpoint of everything but the optimizer, which the trainer owns and
hands over with :meth:`Algorithm.configure`.

``update(x, y, g, idx)`` runs one optimisation step and returns a dict of detached
device tensors; it never calls ``.item()`` or otherwise syncs with the host.
It does not change the train/eval mode: the trainer calls ``algo.train()`` before
training and ``algo.eval()`` (with ``torch.no_grad()``) around ``predict``.

Shared pieces (functions, reused by every method):
- :func:`per_sample_losses`: logits and per-sample cross-entropy;
- :func:`group_mean`: per-group mean with counts clamped to 1 (empty group -> 0);
- :func:`eg_update_`: exponentiated-gradient step of the group weights q;
- :func:`sam_perturb_` / :func:`restore_`: the SAM / ASAM ascent w <- w + eps and
  the exact restore of w (saved copies, not w + eps - eps), with foreach ops;
- :func:`bn_second_pass`: the BatchNorm running-statistics policy of the second pass;
- :func:`train_reference_erm` / :func:`collect_logits`: the ERM reference model of
  the two-stage methods (JTT, EIIL);
- :func:`replica_group_mean`: :func:`group_mean` over the global batch of a
  data-parallel run (sums and counts all-reduced).

Precision and data parallelism live in two helpers that ``configure`` hands over
(``amp.Precision`` and ``distributed.Replicas``); every method goes through the same
step hooks (``_begin_step``, ``_forward``, ``_backward``, ``_perturb``,
``_second_backward``, ``_finish_step``), so no method carries AMP or DDP logic of its own.
In a single fp32 process the hooks reduce to the plain calls (zero_grad, forward,
backward, optimizer step).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sharpdro.config import ConfigError, algorithm_hparams

Batch = tuple  # (x, y, g | None, idx) device tensors


def _no_progress(iterable: Iterable, desc: str = "") -> Iterable:
    return iterable


@dataclass
class PrepareContext:
    """What the trainer gives :meth:`Algorithm.prepare` (the pre-stage of JTT, EIIL, GroupDRO counts).

    - ``epochs_batches(epoch)``: the batches ``(x, y, g, idx)`` of one training epoch,
      shuffled and augmented as in training (``g`` is None for group-agnostic methods);
    - ``ordered_batches()``: every training point once, in order, without augmentation;
    - ``make_model()``: a freshly initialised network of the run's architecture, on ``device``;
    - ``make_optimizer(params)``: an optimizer with the run's SGD settings;
    - ``lr_at(epoch)``: the run's learning rate at that epoch;
    - ``progress(iterable, desc)``: wraps an iterable with a progress bar.
    """

    epochs_batches: Callable[[int], Iterable[Batch]]
    ordered_batches: Callable[[], Iterable[Batch]]
    make_model: Callable[[], nn.Module]
    make_optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
    lr_at: Callable[[int], float]
    train_size: int
    device: torch.device | str = "cpu"
    progress: Callable[[Iterable, str], Iterable] = field(default=_no_progress)


# --------------------------------------------------------------------------- shared functions
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
def eg_update_(q: torch.Tensor, losses: torch.Tensor, eta: float) -> torch.Tensor:
    """In place ``q <- q * exp(eta * L) / Z`` (exponentiated gradient on the simplex).

    ``L`` is shifted by its maximum before the exponential (it cancels in the
    normalisation), so large ``eta * L`` cannot overflow.
    """
    losses = losses.detach().to(q.dtype)
    w = q * torch.exp(eta * (losses - losses.max()))
    q.copy_(w / w.sum())
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


def train_reference_erm(ctx: PrepareContext, epochs: int, desc: str,
                        amp: Callable[[], ContextManager] | None = None) -> nn.Module:
    """Train a fresh network with plain ERM for ``epochs`` epochs on the ctx batches (the run's SGD and lr)."""
    from sharpdro.backends.torch.amp import Precision

    model = ctx.make_model()
    optimizer = ctx.make_optimizer(model.parameters())
    # A fresh loss scale for the reference model (fp16); autocast only for a bare factory.
    precision = amp.fresh() if isinstance(amp, Precision) else None
    model.train()
    with torch.enable_grad():  # the trainer may call prepare() under no_grad
        for epoch in range(epochs):
            set_lr(optimizer, ctx.lr_at(epoch))
            for x, y, _g, _idx in ctx.progress(ctx.epochs_batches(epoch), f"{desc} {epoch + 1}/{epochs}"):
                optimizer.zero_grad(set_to_none=True)
                if precision is None:
                    _, per = per_sample_losses(model, x, y, amp)
                    per.mean().backward()
                    optimizer.step()
                else:
                    precision.begin()
                    _, per = per_sample_losses(model, x, y, precision)
                    precision.backward(per.mean())
                    precision.step(optimizer)
    model.eval()
    return model


@torch.no_grad()
def collect_logits(model: nn.Module, ctx: PrepareContext, desc: str,
                   amp: Callable[[], ContextManager] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode logits [N, C] and labels [N] of every training point, placed by index."""
    was_training = model.training
    model.eval()
    logits_all = labels = None
    for x, y, _g, idx in ctx.progress(ctx.ordered_batches(), desc):
        with (amp() if amp is not None else contextlib.nullcontext()):
            out = model(x)
        out = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
        if logits_all is None:
            logits_all = torch.full((ctx.train_size, out.shape[1]), float("nan"), dtype=out.dtype, device=out.device)
            labels = torch.full((ctx.train_size,), -1, dtype=torch.long, device=out.device)
        logits_all[idx] = out
        labels[idx] = y
    model.train(was_training)
    if logits_all is None:
        raise ConfigError("the training set is empty: nothing to predict in the pre-stage")
    return logits_all, labels


# --------------------------------------------------------------------------- the interface
class Algorithm(nn.Module):
    """One training method: ``update`` (a step), ``predict`` (logits), optional ``prepare``.

    Subclasses set ``name`` and ``uses_groups`` (True only if training needs the
    severity labels: the trainer passes ``g=None`` otherwise).
    """

    name: str = ""
    uses_groups: bool = False

    def __init__(self, model: nn.Module, num_classes: int, num_groups: int, hparams: Mapping[str, Any] | None = None,
                 train_size: int = 0, *, register_model: bool = True):
        super().__init__()
        if register_model:
            self.model = model
        else:  # a component of another algorithm that already holds (and checkpoints) the model
            object.__setattr__(self, "model", model)
        self.num_classes = int(num_classes)
        self.num_groups = int(num_groups)
        self.train_size = int(train_size)
        self.hparams = algorithm_hparams(hparams)
        ref = next(iter(model.parameters()), None)
        self._device = ref.device if ref is not None else torch.device("cpu")
        self._dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        self.register_buffer("prepared_flag", torch.zeros((), dtype=torch.bool, device=self._device))
        self.optimizer: torch.optim.Optimizer | None = None
        self.amp: Callable[[], ContextManager] | None = None
        self.precision = None  # amp.Precision (autocast + fp16 loss scale), None: plain fp32
        self.replicas = None   # distributed.Replicas, None: one process
        self._step_snapshot: list | None = None
        object.__setattr__(self, "_net", None)  # not a submodule: checkpoints hold self.model only

    # -- trainer hooks ---------------------------------------------------------------
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
        self.amp = self.precision
        object.__setattr__(self, "_net", getattr(replicas, "net", None))
        self.replicas = replicas if replicas is not None and replicas.world_size > 1 else None

    # -- the step hooks every method goes through ------------------------------------------
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
        return []

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
        return per_sample_losses(self.net, x, y, self.amp)

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

    def _group_mean(self, values: torch.Tensor, groups: torch.Tensor, counts: torch.Tensor | None = None,
                    reduce_value: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Group means of the global batch (one process: :func:`group_mean`)."""
        if self.replicas is None and counts is None:
            return group_mean(values, groups, self.num_groups)
        return replica_group_mean(values, groups, self.num_groups, self.replicas, counts, reduce_value)

    def _global_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over replicas of a detached tensor (itself in one process)."""
        if self.replicas is None:
            return value
        return self.replicas.all_reduce_sum_(value.detach().clone())

    def prepare(self, ctx: PrepareContext) -> None:
        """Pre-stage before the first training epoch (default: nothing)."""
        self.mark_prepared()

    @property
    def prepared(self) -> bool:
        return bool(self.prepared_flag)

    def mark_prepared(self) -> None:
        self.prepared_flag.fill_(True)

    def update(self, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor | None, idx: torch.Tensor) -> dict:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision is not None and self.precision.autocast_enabled:
            with self.precision():
                return self.model(x)
        return self.model(x)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._after_load()
        return out

    def _after_load(self) -> None:
        """Refresh host-side mirrors of loaded buffers (outside ``update``, so syncing is fine)."""
        for m in self.children():
            if isinstance(m, Algorithm):
                m._after_load()

    # -- helpers for subclasses ---------------------------------------------------------
    def _opt(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            raise RuntimeError(f"{type(self).__name__}.configure(optimizer) must be called before update()")
        return self.optimizer

    def _new_buffer(self, name: str, tensor: torch.Tensor) -> None:
        self.register_buffer(name, tensor.to(self._device))

    @staticmethod
    def _stats(logits: torch.Tensor, per: torch.Tensor, y: torch.Tensor, **extra) -> dict:
        out = {"loss": per.detach().mean(), "per_sample_loss": per.detach(),
               "correct": logits.detach().argmax(1) == y}
        out.update({k: v.detach() for k, v in extra.items()})
        return out


class GroupWeighted(Algorithm):
    """Shared state of the group-weighted methods: the weights ``q`` and the training group counts.

    ``q`` starts uniform.  The GroupDRO generalisation adjustment ``C / sqrt(n_g)``
    (``gen_adjustment`` > 0) enters the q update only (as in the reference GroupDRO
    loss computer; a constant per group would not change the gradient anyway) and
    needs the training count n_g of each group: :meth:`prepare` counts them from
    ``ctx.ordered_batches()`` (no forward pass), or call :meth:`set_group_counts`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        G = self.num_groups
        self._new_buffer("q", torch.full((G,), 1.0 / G, dtype=self._dtype))
        self._new_buffer("group_counts", torch.zeros(G, dtype=torch.long))
        self._new_buffer("adjustment", torch.zeros(G, dtype=self._dtype))
        self.eta = float(self.hparams["eta"])
        self.gen_adjustment = float(self.hparams["gen_adjustment"])
        self._counts_ready = False

    def set_group_counts(self, counts: torch.Tensor) -> None:
        counts = torch.as_tensor(counts, device=self.group_counts.device).long()
        if counts.shape != (self.num_groups,):
            raise ValueError(f"group counts must have shape ({self.num_groups},), got {tuple(counts.shape)}")
        self.group_counts.copy_(counts)
        self.adjustment.copy_(self.gen_adjustment / counts.to(self.adjustment.dtype).clamp(min=1.0).sqrt())
        self._counts_ready = True

    def prepare(self, ctx: PrepareContext) -> None:
        if self.gen_adjustment > 0:
            counts = torch.zeros(self.num_groups, dtype=torch.long, device=self.group_counts.device)
            for _x, _y, g, _idx in ctx.progress(ctx.ordered_batches(), "counting groups"):
                if g is None:
                    raise ConfigError(f"{self.name}: gen_adjustment needs group labels in the pre-stage")
                counts += torch.bincount(g.to(counts.device), minlength=self.num_groups)[: self.num_groups]
            self.set_group_counts(counts)
        self.mark_prepared()

    def _after_load(self) -> None:
        super()._after_load()
        self._counts_ready = bool(self.group_counts.sum() > 0)

    def check_ready(self) -> None:
        """Called first in ``update`` (before any forward pass), so a failure leaves no trace."""
        if self.gen_adjustment > 0 and not self._counts_ready:
            raise ConfigError(f"{self.name}: gen_adjustment > 0 needs the training group counts: run "
                              f"prepare(ctx) or set_group_counts() first")

    def step_state(self) -> list[torch.Tensor]:
        return [self.q]

    def update_q(self, group_losses: torch.Tensor) -> torch.Tensor:
        """q <- q exp(eta (L + C/sqrt(n))) / Z from detached group losses L (no host sync)."""
        if self.gen_adjustment > 0:
            group_losses = group_losses + self.adjustment
        return eg_update_(self.q, group_losses, self.eta)
