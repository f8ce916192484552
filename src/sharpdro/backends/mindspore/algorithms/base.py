"""The MindSpore algorithm interface and its shared pieces (the counterpart of ``backends/torch/algorithms/base.py``).

An :class:`Algorithm` holds the network (``self.model``, an ``nn.Cell``), the optimizer
the session hands over (:meth:`Algorithm.configure`), and its state as NumPy arrays
named exactly as the PyTorch algorithm's buffers (``q``, ``group_counts``,
``adjustment``, ``prepared_flag``, ``error_set``, ``weights``, ``env``,
``score_memory``; EIIL's robust learner under ``robust.``), so a checkpoint converts
between the backends by renaming the network parameters only.

``update(x, y, g, idx)`` runs one optimisation step in PyNative mode: ``x`` float32
NCHW, ``y`` and ``g`` int32 MindSpore tensors (``g`` None for group-agnostic methods),
``idx`` the batch's training indices as a NumPy int64 array (host-side lookups).  It
returns NumPy arrays: ``loss``, ``per_sample_loss``, ``correct`` and extras (``q``,
``selected``).

How the two-pass steps are written (the equality traps of MindSpore):
- gradients come from ``mindspore.value_and_grad(fn, None, weights, has_aux=True)``,
  which returns ``((loss, aux), grads)``; auxiliary outputs carry no gradient;
- a value that PyTorch computes between the forward and the backward of the same
  pass (GroupDRO's q update, SharpDRO ``perturb_on='worst'``) is computed inside the
  loss function and wrapped in ``ops.stop_gradient``, which is the same number;
- the weights are saved with ``Tensor.copy()`` (``ops.identity`` would alias them in
  PyNative), perturbed with ``ops.assign_add`` and restored with ``ops.assign``;
- BatchNorm running statistics are frozen in the second pass by snapshot and restore.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from sharpdro.backends.mindspore import _runtime  # noqa: F401  (the CPU setting, before MindSpore loads)
import mindspore as ms
from mindspore import nn, ops

from sharpdro import methods
from sharpdro.config import algorithm_hparams
from sharpdro.data.batches import SamplingPlan
from sharpdro.data.groups import check_group_array
from sharpdro.errors import ConfigError

F32 = ms.float32

STEPS: dict[str, type["Algorithm"]] = {}


def register_step(name: str):
    """Class decorator: the MindSpore step of the registered method ``name``."""
    spec = methods.get(name)

    def deco(cls):
        cls.name, cls.spec, cls.uses_groups = spec.name, spec, spec.needs_groups
        STEPS[spec.name] = cls
        return cls

    return deco


def build_algorithm(name: str, model: nn.Cell, num_classes: int, num_groups: int,
                    hparams: Mapping[str, Any] | None = None, train_size: int = 0) -> "Algorithm":
    spec = methods.get(name)
    if spec.name not in STEPS:
        raise ConfigError(f"algorithm {name!r} has no MindSpore step; register one with @register_step({name!r})")
    return STEPS[spec.name](model, num_classes, num_groups, hparams, train_size)


def _no_progress(iterable: Iterable, desc: str = "") -> Iterable:
    return iterable


@dataclass
class PrepareContext:
    """What the session gives :meth:`Algorithm.prepare` (see the PyTorch ``PrepareContext``).

    Batches are ``(x, y, g, idx)`` as in ``update``; ``make_model()`` is a freshly
    initialised network, ``make_optimizer(params)`` the run's SGD over ``params``.
    """

    epochs_batches: Callable[[int], Iterable[tuple]]
    ordered_batches: Callable[[], Iterable[tuple]]
    make_model: Callable[[], nn.Cell]
    make_optimizer: Callable[[Iterable[ms.Parameter]], nn.Optimizer]
    lr_at: Callable[[int], float]
    train_size: int
    device: str = "cpu"
    progress: Callable[[Iterable, str], Iterable] = field(default=_no_progress)
    val_batches: Callable[[], Iterable[tuple]] | None = None
    run_epochs: int = 1
    base_lr: float | None = None


# --------------------------------------------------------------------------- shared functions
def per_sample_losses(model: nn.Cell, x, y):
    """Forward pass: ``(logits, per-sample cross-entropy)``."""
    logits = model(x)
    return logits, ops.cross_entropy(logits, y, reduction="none")


def group_mean(values, groups, num_groups: int):
    """Mean of ``values`` [B] per group id and the counts (clamped to 1: an empty group's mean is 0)."""
    onehot = (groups.reshape(-1, 1) == ops.arange(num_groups, dtype=groups.dtype).reshape(1, -1)).astype(values.dtype)
    counts = onehot.sum(0)
    sums = ops.matmul(values.reshape(1, -1), onehot).reshape(-1)
    return sums / ops.clamp(counts, min=1.0), counts


def eg_update(q, losses, eta: float, present=None):
    """``q * exp(eta * L) / Z`` (L shifted by its maximum, which cancels), a new tensor.

    ``present`` (bool [G], ``q_absent='skip'``): only the present groups move, renormalised
    within their own mass (the PyTorch :func:`eg_update_`).
    """
    losses = ops.stop_gradient(losses).astype(q.dtype)
    if present is None:
        w = q * ops.exp(eta * (losses - losses.max()))
        return w / w.sum()
    zero = ops.zeros_like(q)
    shift = ops.where(present, losses, losses.min()).max()
    w = ops.where(present, q * ops.exp(eta * (losses - shift)), zero)
    mass = ops.where(present, q, zero).sum()
    tiny = float(np.finfo(np.float32).tiny)
    return ops.where(present, w * (mass / ops.clamp(w.sum(), min=tiny)), q)


def global_norm(tensors) -> ms.Tensor:
    return ops.sqrt(ops.stack([(t * t).sum() for t in tensors]).sum())


def sam_perturb(params, grads, rho: float, adaptive: bool = False) -> list:
    """SAM / ASAM ascent ``w <- w + eps`` from ``grads``; returns copies of the old weights.

    SAM:  eps = rho * g / (||g|| + 1e-12).
    ASAM: eps = rho * w^2 * g / (||w * g|| + 1e-12).
    """
    saved = [p.value().copy() for p in params]
    if not params:
        return saved
    if adaptive:
        norm = global_norm([ops.abs(w) * gr for w, gr in zip(saved, grads)])
        eps = [w * w * gr for w, gr in zip(saved, grads)]
    else:
        norm = global_norm(grads)
        eps = list(grads)
    scale = rho / (norm + 1e-12)
    for p, e in zip(params, eps):
        ops.assign_add(p, e * scale)
    return saved


def restore(params, saved) -> None:
    """Copy the saved weights back (exact, unlike subtracting eps)."""
    for p, s in zip(params, saved):
        ops.assign(p, s)


def bn_statistics(model: nn.Cell) -> list[ms.Parameter]:
    out = []
    for _n, cell in model.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            out += [cell.moving_mean, cell.moving_variance]
    return out


class BNSecondPass:
    """BatchNorm running statistics during a SAM second pass: ``freeze`` (snapshot, restore) or ``update``."""

    def __init__(self, model: nn.Cell, policy: str):
        if policy not in ("freeze", "update"):
            raise ConfigError(f"bn_second_pass must be 'freeze' or 'update', got {policy!r}")
        self.policy = policy
        self.stats = bn_statistics(model) if policy == "freeze" else []
        self.saved: list = []

    def __enter__(self):
        self.saved = [b.value().copy() for b in self.stats]
        return self

    def __exit__(self, *exc):
        for b, s in zip(self.stats, self.saved):
            ops.assign(b, s)
        self.saved = []
        return False


def set_lr(optimizer: nn.Optimizer, lr: float) -> None:
    ops.assign(optimizer.learning_rate, ms.Tensor(lr, optimizer.learning_rate.dtype))


def add_grads(a, b) -> tuple:
    return tuple(x + y for x, y in zip(a, b))


def _erm_loss(model):
    def fn(x, y):
        logits, per = per_sample_losses(model, x, y)
        return per.mean(), (logits, per)

    return fn


def train_reference_erm(ctx: PrepareContext, epochs: int, desc: str, lr: float | None = None,
                        select: str = "last", report: dict | None = None) -> nn.Cell:
    """Train a fresh network with plain ERM for ``epochs`` epochs (the run's SGD; see the PyTorch function:
    ``lr`` constant or the schedule, ``select`` last or ``val_loss``, ``report``)."""
    model = ctx.make_model()
    optimizer = ctx.make_optimizer(model.trainable_params())
    grad_fn = ms.value_and_grad(_erm_loss(model), None, optimizer.parameters, has_aux=True)
    use_val = select == "val_loss" and ctx.val_batches is not None
    best, best_state, best_epoch = float("inf"), None, epochs
    val_losses, train_acc = [], []
    model.set_train(True)
    for epoch in range(epochs):
        set_lr(optimizer, ctx.lr_at(epoch) if lr is None else lr)
        correct = seen = 0
        for x, y, _g, _idx in ctx.progress(ctx.epochs_batches(epoch), f"{desc} {epoch + 1}/{epochs}"):
            (_, (logits, _per)), grads = grad_fn(x, y)
            optimizer(grads)
            correct += int((logits.argmax(1).asnumpy() == y.asnumpy()).sum())
            seen += int(y.shape[0])
        train_acc.append(correct / max(seen, 1))
        if use_val:
            loss = _mean_loss(model, ctx)
            val_losses.append(loss)
            if loss < best:
                best, best_epoch = loss, epoch + 1
                best_state = {p.name: p.asnumpy().copy() for p in model.get_parameters()}
            model.set_train(True)
    if best_state is not None and best_epoch != epochs:
        for p in model.get_parameters():
            p.set_data(ms.Tensor(best_state[p.name]))
    model.set_train(False)
    if report is not None:
        report.update({"epochs": int(epochs), "kept_epoch": int(best_epoch),
                       "selection": "val_loss" if use_val else "last",
                       "lr": "schedule" if lr is None else float(lr),
                       "train_accuracy_by_epoch": train_acc, "val_loss_by_epoch": val_losses})
    return model


def _mean_loss(model: nn.Cell, ctx: PrepareContext) -> float:
    """Mean cross-entropy of ``model`` (eval mode) over ``ctx.val_batches()`` (float64 sum)."""
    model.set_train(False)
    total, n = 0.0, 0
    for x, y, _g, _idx in ctx.val_batches():
        per = ops.cross_entropy(model(x), y, reduction="none").asnumpy()
        total += float(per.astype(np.float64).sum())
        n += int(per.shape[0])
    return total / max(n, 1)


def collect_logits(model: nn.Cell, ctx: PrepareContext, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode logits [N, C] (float32) and labels [N] (int64) of every training point, placed by index."""
    was_training = model.training
    model.set_train(False)
    logits_all = labels = None
    for x, y, _g, idx in ctx.progress(ctx.ordered_batches(), desc):
        out = model(x).asnumpy()
        if logits_all is None:
            logits_all = np.full((ctx.train_size, out.shape[1]), np.nan, dtype=np.float32)
            labels = np.full(ctx.train_size, -1, dtype=np.int64)
        logits_all[idx] = out
        labels[idx] = y.asnumpy()
    model.set_train(was_training)
    if logits_all is None:
        raise ConfigError("the training set is empty: nothing to predict in the pre-stage")
    return logits_all, labels


# --------------------------------------------------------------------------- the interface
class Algorithm:
    """One training method (``update``, ``predict``, optional ``prepare``), as the PyTorch ``Algorithm``."""

    name: str = ""
    spec: methods.MethodSpec | None = None
    uses_groups: bool = False
    #: draws n standard normals (float32) for a pre-stage's random start; the session sets it
    randn: Callable[[int], np.ndarray] | None = None

    def __init__(self, model: nn.Cell, num_classes: int, num_groups: int, hparams: Mapping[str, Any] | None = None,
                 train_size: int = 0, *, register_model: bool = True):
        self.model = model
        self.owns_model = register_model  # False: a component of another algorithm that checkpoints the model
        self.num_classes = int(num_classes)
        self.num_groups = int(num_groups)
        self.train_size = int(train_size)
        self.hparams = algorithm_hparams(hparams)
        if self.spec is not None:
            self.spec.validate(self.hparams)
        self.buffers: dict[str, np.ndarray] = {"prepared_flag": np.zeros((), dtype=np.bool_)}
        self.children: dict[str, Algorithm] = {}
        self.optimizer: nn.Optimizer | None = None
        self._grad_fns: dict[str, Callable] = {}

    # -- session hooks ---------------------------------------------------------------
    def configure(self, optimizer: nn.Optimizer) -> None:
        """Hand over the optimizer (built over ``self.model.trainable_params()``)."""
        self.optimizer = optimizer
        self._grad_fns = {}

    #: what the last :meth:`prepare` found (see the PyTorch ``Algorithm.prestage_info``)
    prestage_info: dict | None = None

    def prepare(self, ctx: PrepareContext) -> None:
        self.mark_prepared()

    def sampling_plan(self) -> SamplingPlan:
        """The training batches the method asks for after its pre-stage (default: each point once)."""
        return SamplingPlan()

    @property
    def prepared(self) -> bool:
        return bool(self.buffers["prepared_flag"])

    def mark_prepared(self) -> None:
        self.buffers["prepared_flag"] = np.ones((), dtype=np.bool_)

    def begin_epoch(self, epoch: int) -> None:
        """Called by the session before the first step of each training epoch (after a resume too); default
        nothing."""

    def apply_prestage(self, record) -> None:
        """Install what the pre-stage records (``spec.prestage.records``) without running it."""
        raise NotImplementedError(f"{self.name} has no pre-stage")

    def update(self, x, y, groups, idx) -> dict:
        raise NotImplementedError

    def predict(self, x):
        return self.model(x)

    def train(self, mode: bool = True) -> "Algorithm":
        self.model.set_train(mode)
        return self

    def eval(self) -> "Algorithm":
        return self.train(False)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """``model.<MindSpore parameter name>`` and the buffers (names as the PyTorch algorithm's)."""
        out: dict[str, np.ndarray] = {}
        if self.owns_model:
            out.update({f"model.{p.name}": p.asnumpy().copy() for p in self.model.get_parameters()})
        out.update({k: np.array(v, copy=True) for k, v in self.buffers.items()})
        for prefix, child in self.children.items():
            out.update({f"{prefix}.{k}": v for k, v in child.state_dict().items()})
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if strict and (missing or unexpected):
            raise ConfigError(f"{self.name}: the checkpoint does not match the model / algorithm "
                              f"(missing: {missing[:5]}{'...' if len(missing) > 5 else ''}; unexpected: "
                              f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''})")
        for k, ref in expected.items():
            if k in state and tuple(np.shape(state[k])) != tuple(np.shape(ref)):
                raise ConfigError(f"{self.name}: checkpoint entry {k!r} has shape {tuple(np.shape(state[k]))}, "
                                  f"the model expects {tuple(np.shape(ref))}")
        self._load(state)
        self._after_load()

    def _load(self, state: Mapping[str, np.ndarray]) -> None:
        if self.owns_model:
            for p in self.model.get_parameters():
                key = f"model.{p.name}"
                if key in state:
                    p.set_data(ms.Tensor(np.asarray(state[key], dtype=np.float32)))
        for k, v in self.buffers.items():
            if k in state:
                self.buffers[k] = np.asarray(state[k], dtype=v.dtype).copy()
        for prefix, child in self.children.items():
            child._load({k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")})

    def _after_load(self) -> None:
        for child in self.children.values():
            child._after_load()

    # -- helpers for subclasses ---------------------------------------------------------
    def _opt(self) -> nn.Optimizer:
        if self.optimizer is None:
            raise RuntimeError(f"{type(self).__name__}.configure(optimizer) must be called before update()")
        return self.optimizer

    def _params(self):
        return self._opt().parameters

    def _grad(self, key: str, fn: Callable) -> Callable:
        """``value_and_grad`` of ``fn`` w.r.t. the optimizer's parameters, built once per key."""
        if key not in self._grad_fns:
            self._grad_fns[key] = ms.value_and_grad(fn, None, self._params(), has_aux=True)
        return self._grad_fns[key]

    def _erm_grad(self):
        return self._grad("erm", _erm_loss(self.model))

    @staticmethod
    def _stats(logits, per_sample_loss, y, **extra) -> dict:
        per_np = per_sample_loss.asnumpy()
        out = {"loss": float(per_np.mean()), "per_sample_loss": per_np,
               "correct": logits.argmax(1).asnumpy() == y.asnumpy()}
        out.update({k: (v.asnumpy() if isinstance(v, ms.Tensor) else np.asarray(v)) for k, v in extra.items()})
        return out


class GroupWeighted(Algorithm):
    """The group weights ``q`` (uniform at the start) and the training group counts (see the PyTorch class)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        G = self.num_groups
        self.buffers["q"] = np.full(G, 1.0 / G, dtype=np.float32)
        self.buffers["group_counts"] = np.zeros(G, dtype=np.int64)
        self.buffers["adjustment"] = np.zeros(G, dtype=np.float32)
        self.eta = float(self.hparams["eta"])
        self.gen_adjustment = float(self.hparams["gen_adjustment"])
        self.q_absent = self.hparams["q_absent"]
        self._counts_ready = False

    def set_group_counts(self, counts) -> None:
        counts = np.asarray(counts).astype(np.int64)
        if counts.shape != (self.num_groups,):
            raise ValueError(f"group counts must have shape ({self.num_groups},), got {counts.shape}")
        self.buffers["group_counts"] = counts.copy()
        # float32 arithmetic, as the PyTorch buffer: C / sqrt(max(n, 1))
        n = np.maximum(counts.astype(np.float32), np.float32(1.0))
        self.buffers["adjustment"] = (np.float32(self.gen_adjustment) / np.sqrt(n)).astype(np.float32)
        self._counts_ready = True

    def prepare(self, ctx: PrepareContext) -> None:
        if self.gen_adjustment > 0:
            counts = np.zeros(self.num_groups, dtype=np.int64)
            for _x, _y, g, _idx in ctx.progress(ctx.ordered_batches(), "counting groups"):
                if g is None:
                    raise ConfigError(f"{self.name}: gen_adjustment needs group labels in the pre-stage")
                counts += np.bincount(g.asnumpy(), minlength=self.num_groups)[: self.num_groups]
            self.set_group_counts(counts)
        self.mark_prepared()

    def _after_load(self) -> None:
        super()._after_load()
        self._counts_ready = bool(self.buffers["group_counts"].sum() > 0)

    def check_ready(self, groups=None) -> None:
        """Before a step: the group counts ``gen_adjustment`` needs, and ``groups`` in ``[0, num_groups)``."""
        if self.gen_adjustment > 0 and not self._counts_ready:
            raise ConfigError(f"{self.name}: gen_adjustment > 0 needs the training group counts: run "
                              f"prepare(ctx) or set_group_counts() first")
        if groups is not None:
            check_group_array(groups.asnumpy() if hasattr(groups, "asnumpy") else groups, self.num_groups)

    def q_tensor(self) -> ms.Tensor:
        return ms.Tensor(self.buffers["q"])

    def adjustment_tensor(self) -> ms.Tensor | None:
        return ms.Tensor(self.buffers["adjustment"]) if self.gen_adjustment > 0 else None

    def next_q(self, q, group_losses, adjustment, counts=None):
        """q <- q exp(eta (L + C/sqrt(n))) / Z from detached group losses (usable inside a loss function);
        with ``q_absent='skip'`` a group of count 0 in ``counts`` keeps its q."""
        group_losses = ops.stop_gradient(group_losses)
        if adjustment is not None:
            group_losses = group_losses + adjustment
        present = counts > 0 if (self.q_absent == "skip" and counts is not None) else None
        return eg_update(q, group_losses, self.eta, present)

    def store_q(self, q) -> np.ndarray:
        self.buffers["q"] = q.asnumpy().astype(np.float32).copy()
        return self.buffers["q"]
