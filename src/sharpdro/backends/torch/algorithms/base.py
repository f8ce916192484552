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
  the two-stage methods (JTT, EIIL).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sharpdro.config import ConfigError, default_config

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


def resolve_hparams(hparams: Mapping[str, Any] | None) -> dict:
    """The ``algorithm`` section defaults (config.SCHEMA) overridden by ``hparams``; unknown keys raise."""
    out = default_config()["algorithm"]
    unknown = sorted(set(hparams or {}) - set(out))
    if unknown:
        raise ConfigError(f"unknown algorithm hyperparameter(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(out))}")
    out.update(hparams or {})
    return out


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
    saved = [p.detach().clone() for p in params]
    if not params:
        return saved
    grads = [p.grad for p in params]
    if adaptive:
        scaled = torch._foreach_mul(torch._foreach_abs(saved), grads)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
        eps = torch._foreach_mul(torch._foreach_mul(saved, saved), grads)
    else:
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        eps = [g.clone() for g in grads]
    scale = rho / (norm + 1e-12)
    torch._foreach_mul_(eps, scale.to(eps[0].dtype))
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
        with torch.no_grad():
            for b, s in zip(bufs, saved):
                b.copy_(s)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_reference_erm(ctx: PrepareContext, epochs: int, desc: str,
                        amp: Callable[[], ContextManager] | None = None) -> nn.Module:
    """Train a fresh network with plain ERM for ``epochs`` epochs on the ctx batches (the run's SGD and lr)."""
    model = ctx.make_model()
    optimizer = ctx.make_optimizer(model.parameters())
    model.train()
    with torch.enable_grad():  # the trainer may call prepare() under no_grad
        for epoch in range(epochs):
            set_lr(optimizer, ctx.lr_at(epoch))
            for x, y, _g, _idx in ctx.progress(ctx.epochs_batches(epoch), f"{desc} {epoch + 1}/{epochs}"):
                optimizer.zero_grad(set_to_none=True)
                _, per = per_sample_losses(model, x, y, amp)
                per.mean().backward()
                optimizer.step()
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
        self.hparams = resolve_hparams(hparams)
        ref = next(iter(model.parameters()), None)
        self._device = ref.device if ref is not None else torch.device("cpu")
        self._dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        self.register_buffer("prepared_flag", torch.zeros((), dtype=torch.bool, device=self._device))
        self.optimizer: torch.optim.Optimizer | None = None
        self.amp: Callable[[], ContextManager] | None = None

    # -- trainer hooks ---------------------------------------------------------------
    def configure(self, optimizer: torch.optim.Optimizer, amp: Callable[[], ContextManager] | None = None) -> None:
        """Hand over the optimizer (built over ``self.model.parameters()``).

        ``amp``: optional zero-argument factory of an autocast context; it wraps the
        forward passes only (losses and backward run outside it).  A GradScaler
        (fp16) is not supported by the two-pass methods.
        """
        self.optimizer = optimizer
        self.amp = amp

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

    def update_q(self, group_losses: torch.Tensor) -> torch.Tensor:
        """q <- q exp(eta (L + C/sqrt(n))) / Z from detached group losses L (no host sync)."""
        if self.gen_adjustment > 0:
            group_losses = group_losses + self.adjustment
        return eg_update_(self.q, group_losses, self.eta)
