"""The PyTorch algorithm interface, its state containers and the step registry.

An :class:`Algorithm` is an ``nn.Module`` holding the network (``self.model``) and
every piece of algorithm state as registered buffers (group weights ``q``, JTT's
weights, EIIL's environments, the ``prepared`` flag ...), so ``state_dict()`` is a
complete checkpoint of everything but the optimizer, which the trainer owns and
hands over with :meth:`Algorithm.configure`.

``update(x, y, groups, idx)`` runs one optimisation step and returns a dict of detached
device tensors; it never calls ``.item()`` or otherwise syncs with the host.
It does not change the train/eval mode: the trainer calls ``algo.train()`` before
training and ``algo.eval()`` (with ``torch.no_grad()``) around ``predict``.

What a method is (name, hyperparameters, checks, records) is in :mod:`sharpdro.methods`;
a step class here is registered against that name with :func:`register_step`.
The formulas are in :mod:`.functional`, the AMP + DDP step hooks in :mod:`.step`.
Also here: :func:`train_reference_erm` / :func:`collect_logits`, the ERM reference
model of the two-stage methods (JTT, EIIL).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sharpdro import methods
from sharpdro.backends.torch.algorithms.functional import (  # noqa: F401  (re-exported)
    _bn_buffers, bn_second_pass, check_group_ids, eg_update_, group_mean, params_with_grad, per_sample_losses,
    replica_group_mean, restore_, sam_perturb_, set_lr)
from sharpdro.backends.torch.algorithms.step import StepProtocol
from sharpdro.config import algorithm_hparams
from sharpdro.data.batches import SamplingPlan
from sharpdro.errors import ConfigError

Batch = tuple  # (x, y, groups | None, idx) device tensors

STEPS: dict[str, type["Algorithm"]] = {}


def register_step(name: str):
    """Class decorator: the PyTorch step of the registered method ``name``."""
    spec = methods.get(name)

    def deco(cls):
        cls.name, cls.spec, cls.uses_groups = spec.name, spec, spec.needs_groups
        STEPS[spec.name] = cls
        return cls

    return deco


def build_algorithm(name: str, model: nn.Module, num_classes: int, num_groups: int,
                    hparams: Mapping[str, Any] | None = None, train_size: int = 0) -> "Algorithm":
    """The algorithm ``name`` around ``model`` (``hparams``: the config's ``algorithm`` section)."""
    spec = methods.get(name)
    if spec.name not in STEPS:
        raise ConfigError(f"algorithm {name!r} has no PyTorch step; register one with @register_step({name!r})")
    return STEPS[spec.name](model, num_classes, num_groups, hparams, train_size)


def _no_progress(iterable: Iterable, desc: str = "") -> Iterable:
    return iterable


@dataclass
class PrepareContext:
    """What the trainer gives :meth:`Algorithm.prepare` (the pre-stage of JTT, EIIL, GroupDRO counts).

    - ``epochs_batches(epoch)``: the batches ``(x, y, g, idx)`` of one training epoch,
      shuffled and augmented as in training (``g`` is None for group-agnostic methods);
    - ``ordered_batches()``: every training point once, in order, without augmentation;
    - ``make_model()``: a freshly initialised network of the run's architecture, on ``device``;
    - ``make_optimizer(params)``: the run's base optimizer (``train.optimizer``, SGD or AdamW) over ``params``;
    - ``lr_at(epoch)``: the run's learning rate at that epoch;
    - ``progress(iterable, desc)``: wraps an iterable with a progress bar;
    - ``val_batches()``: every validation point once (None: no validation data);
    - ``run_epochs``, ``base_lr``: the run's ``train.epochs`` and ``train.lr``.
    """

    epochs_batches: Callable[[int], Iterable[Batch]]
    ordered_batches: Callable[[], Iterable[Batch]]
    make_model: Callable[[], nn.Module]
    make_optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
    lr_at: Callable[[int], float]
    train_size: int
    device: torch.device | str = "cpu"
    progress: Callable[[Iterable, str], Iterable] = field(default=_no_progress)
    val_batches: Callable[[], Iterable[Batch]] | None = None
    run_epochs: int = 1
    base_lr: float | None = None


def train_reference_erm(ctx: PrepareContext, epochs: int, desc: str,
                        amp: Callable[[], ContextManager] | None = None, lr: float | None = None,
                        select: str = "last", report: dict | None = None) -> nn.Module:
    """Train a fresh network with plain ERM for ``epochs`` epochs on the ctx batches (the run's optimizer).

    ``lr``: a constant learning rate (None: the run's schedule ``ctx.lr_at``).  ``select``:
    ``last`` keeps the last epoch's weights, ``val_loss`` the epoch of lowest mean validation
    cross-entropy (``ctx.val_batches``; the last when there is none).  ``report`` (a dict)
    receives the epochs, the kept epoch, the validation losses and the training accuracy of
    each epoch (train mode, on the augmented batches).
    """
    from sharpdro.backends.torch.amp import Precision

    model = ctx.make_model()
    optimizer = ctx.make_optimizer(model.parameters())
    # A fresh loss scale for the reference model (fp16); autocast only for a bare factory.
    precision = amp.fresh() if isinstance(amp, Precision) else None
    use_val = select == "val_loss" and ctx.val_batches is not None
    best, best_state, best_epoch = math.inf, None, epochs
    val_losses, train_acc = [], []
    model.train()
    with torch.enable_grad():  # the trainer may call prepare() under no_grad
        for epoch in range(epochs):
            set_lr(optimizer, ctx.lr_at(epoch) if lr is None else lr)
            correct = torch.zeros((), dtype=torch.float64, device=ctx.device)
            seen = 0
            for x, y, _g, _idx in ctx.progress(ctx.epochs_batches(epoch), f"{desc} {epoch + 1}/{epochs}"):
                optimizer.zero_grad(set_to_none=True)
                if precision is None:
                    logits, per = per_sample_losses(model, x, y, amp)
                    per.mean().backward()
                    optimizer.step()
                else:
                    precision.begin()
                    logits, per = per_sample_losses(model, x, y, precision)
                    precision.backward(per.mean())
                    precision.step(optimizer)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += int(y.shape[0])
            train_acc.append(float(correct) / max(seen, 1))
            if use_val:
                loss = _mean_loss(model, ctx, amp)
                val_losses.append(loss)
                if loss < best:
                    best, best_epoch = loss, epoch + 1
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.train()
    if best_state is not None and best_epoch != epochs:
        model.load_state_dict(best_state)
    model.eval()
    if report is not None:
        report.update({"epochs": int(epochs), "kept_epoch": int(best_epoch),
                       "selection": "val_loss" if use_val else "last",
                       "lr": "schedule" if lr is None else float(lr),
                       "train_accuracy_by_epoch": train_acc, "val_loss_by_epoch": val_losses})
    return model


@torch.no_grad()
def _mean_loss(model: nn.Module, ctx: PrepareContext, amp=None) -> float:
    """Mean cross-entropy of ``model`` (eval mode) over ``ctx.val_batches()``."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=ctx.device)
    n = 0
    for x, y, _g, _idx in ctx.val_batches():
        with (amp() if amp is not None else contextlib.nullcontext()):
            out = model(x)
        total += F.cross_entropy(out.float(), y, reduction="sum").double()
        n += int(y.shape[0])
    return float(total) / max(n, 1)


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
class Algorithm(StepProtocol, nn.Module):
    """One training method: ``update`` (a step), ``predict`` (logits), optional ``prepare``.

    ``name``, ``spec`` and ``uses_groups`` (the trainer passes ``groups=None`` unless the
    method needs severity labels) are set by :func:`register_step`.
    """

    name: str = ""
    spec: methods.MethodSpec | None = None
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
        if self.spec is not None:
            self.spec.validate(self.hparams)
        ref = next(iter(model.parameters()), None)
        self._device = ref.device if ref is not None else torch.device("cpu")
        self._dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        self.register_buffer("prepared_flag", torch.zeros((), dtype=torch.bool, device=self._device))
        self.optimizer: torch.optim.Optimizer | None = None
        self._stepped: list[str] = []
        self._step_snapshot: list | None = None
        object.__setattr__(self, "_net", None)  # not a submodule: checkpoints hold self.model only

    #: what the last :meth:`prepare` found (JSON-able; ``members``: a bool array of the points it singles
    #: out), recorded by the trainer; None for a method without a pre-stage or one restored from a checkpoint
    prestage_info: dict | None = None

    def prepare(self, ctx: PrepareContext) -> None:
        """Pre-stage before the first training epoch (default: nothing)."""
        self.mark_prepared()

    def begin_epoch(self, epoch: int) -> None:
        """Called by the session before the first step of each training epoch (after a resume too); default
        nothing.  Outside ``update``, so a host sync here costs once per epoch."""

    def sampling_plan(self) -> SamplingPlan:
        """The training batches the method asks for after its pre-stage (default: each point once)."""
        return SamplingPlan()

    def apply_prestage(self, record: torch.Tensor) -> None:
        """Install what the pre-stage records (``spec.prestage.records``) without running it."""
        raise NotImplementedError(f"{self.name} has no pre-stage")

    @property
    def prepared(self) -> bool:
        return bool(self.prepared_flag)

    def mark_prepared(self) -> None:
        self.prepared_flag.fill_(True)

    def update(self, x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor | None, idx: torch.Tensor) -> dict:
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
    def _new_buffer(self, name: str, tensor: torch.Tensor, stepped: bool = False) -> None:
        """A checkpointed buffer; ``stepped``: changed by ``update`` (rolled back with an overflowed fp16 step)."""
        self.register_buffer(name, tensor.to(self._device))
        if stepped:
            self._stepped.append(name)

    @staticmethod
    def _stats(logits: torch.Tensor, per_sample_loss: torch.Tensor, y: torch.Tensor, **extra) -> dict:
        out = {"loss": per_sample_loss.detach().mean(), "per_sample_loss": per_sample_loss.detach(),
               "correct": logits.detach().argmax(1) == y}
        out.update({k: v.detach() for k, v in extra.items()})
        return out


class GroupWeighted(Algorithm):
    """Shared state of the group-weighted methods: the weights ``q`` and the training group counts.

    ``q`` starts uniform.  A group absent from a batch follows ``q_absent`` (``zero``: loss 0 in
    the update, as the released code; ``skip``: its q does not move).  The GroupDRO generalisation adjustment ``C / sqrt(n_g)``
    (``gen_adjustment`` > 0) enters the q update only (as in the reference GroupDRO
    loss computer; a constant per group would not change the gradient anyway) and
    needs the training count n_g of each group: :meth:`prepare` counts them from
    ``ctx.ordered_batches()`` (no forward pass), or call :meth:`set_group_counts`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        G = self.num_groups
        self._new_buffer("q", torch.full((G,), 1.0 / G, dtype=self._dtype), stepped=True)
        self._new_buffer("group_counts", torch.zeros(G, dtype=torch.long))
        self._new_buffer("adjustment", torch.zeros(G, dtype=self._dtype))
        self.eta = float(self.hparams["eta"])
        self.gen_adjustment = float(self.hparams["gen_adjustment"])
        self.q_absent = self.hparams["q_absent"]
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

    #: read the group-id check's flag on the host even on an accelerator (the public API); the engine's
    #: steps assert on the device instead and stay free of host syncs (see :func:`check_group_ids`)
    sync_group_check: bool = False

    def check_ready(self, groups: torch.Tensor | None = None) -> None:
        """Called first in a step (before any forward pass), so a failure leaves no trace.

        ``groups``: the step's group ids, checked to lie in ``[0, num_groups)`` (one clear error).
        """
        if self.gen_adjustment > 0 and not self._counts_ready:
            raise ConfigError(f"{self.name}: gen_adjustment > 0 needs the training group counts: run "
                              f"prepare(ctx) or set_group_counts() first")
        if groups is not None:
            check_group_ids(groups, self.num_groups, self.sync_group_check)

    def group_dro_loss(self, per_sample_loss: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GroupDRO's objective ``sum_g q_g L_g`` of the (global) batch, q updated first from the detached
        group losses ``L_g``; returns ``(loss, q)``.  Group ids are checked by :meth:`check_ready`."""
        group_loss, counts = self._group_mean(per_sample_loss, groups)  # of the global batch when data-parallel
        q = self.update_q(group_loss.detach(), counts)
        return (q * group_loss).sum(), q

    def update_q(self, group_losses: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """q <- q exp(eta (L + C/sqrt(n))) / Z from detached group losses L (no host sync).

        ``counts``: the batch's group counts; with ``q_absent='skip'`` a group of count 0 keeps its q
        (see :func:`eg_update_`).
        """
        if self.gen_adjustment > 0:
            group_losses = group_losses + self.adjustment
        present = counts > 0 if (self.q_absent == "skip" and counts is not None) else None
        return eg_update_(self.q, group_losses, self.eta, present)
